"""CircuitBreaker.record: only availability failures move the breaker."""

from __future__ import annotations

import pytest

from tieredcache import BackendError
from tieredcache import BackendResponseError
from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import CircuitBreaker
from tieredcache import DeserializationError
from tieredcache import ValueTooLargeError
from tieredcache.breaker import CircuitOpenError
from tieredcache.breaker import is_availability_failure
from tieredcache.testing.clock import FakeClock

ANSWERED = [
    BackendResponseError("WRONGTYPE", backend="redis"),
    ValueTooLargeError("too large", backend="memcached"),
    BackendError("client-side", backend="redis"),
    DeserializationError("corrupt"),
    KeyError("k"),
    CircuitOpenError("refused", backend="l2"),
]
DOWN = [
    BackendUnavailableError("refused", backend="redis"),
    BackendTimeoutError("timed out", backend="redis"),
]


@pytest.mark.parametrize("exc", ANSWERED, ids=lambda e: type(e).__name__)
def test_an_answer_is_not_an_availability_failure(exc: BaseException) -> None:
    assert not is_availability_failure(exc)
    breaker = CircuitBreaker(failures=2, reset_after=10, clock=FakeClock(start=0))
    breaker.record(DOWN[0])
    for _ in range(5):
        breaker.record(exc)  # the tier answered: it also resets the consecutive count
    breaker.record(DOWN[0])
    assert breaker.state == "closed"


@pytest.mark.parametrize("exc", DOWN, ids=lambda e: type(e).__name__)
def test_availability_failures_open_it_and_a_success_closes_it(exc: BaseException) -> None:
    clock = FakeClock(start=0)
    breaker = CircuitBreaker(failures=2, reset_after=10, clock=clock)
    assert is_availability_failure(exc)
    breaker.record(exc)
    breaker.record(exc)
    assert breaker.state == "open" and not breaker.allow()
    clock.advance(10)
    assert breaker.allow()
    breaker.record(None)
    assert breaker.state == "closed"
