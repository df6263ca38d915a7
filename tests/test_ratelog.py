"""Repeated failures are logged at a bounded rate and counted in full."""

from __future__ import annotations

import logging
import typing as t

import pytest

from tieredcache import MemoryBackend
from tieredcache import RaceWrite
from tieredcache import ThreadPoolOffload
from tieredcache import TieredCache
from tieredcache.offload import OffloadKey
from tieredcache.ratelog import RateLimitedLog
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.faults import FaultyBackend

WAIT = 30.0


def test_one_record_per_topic_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(start=0)
    log = RateLimitedLog(interval=10, clock=clock, logger=logging.getLogger("tc.test"))
    with caplog.at_level(logging.WARNING, logger="tc.test"):
        assert log.warning("a", "first %s", 1, exc_info=ValueError("x"))
        for _ in range(99):
            assert not log.warning("a", "again %s", 2)
        assert log.warning("b", "another topic")
        clock.advance(10)
        assert log.warning("a", "later %s", 3)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["first 1", "another topic", "later 3 (99 similar messages suppressed)"]
    assert caplog.records[0].exc_info is not None
    assert log.suppressed_total == 99


def _failing_race(offload: ThreadPoolOffload) -> tuple[TieredCache, FaultyBackend]:
    l2 = FaultyBackend(MemoryBackend(10_000), "l2")
    l2.fail("set")
    cache = TieredCache(MemoryBackend(10_000), l2, write=RaceWrite(), offload=offload, breaker=None)
    return cache, l2


def test_thousand_failing_offloaded_tasks_log_one_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reported: list[BaseException] = []
    with ThreadPoolOffload(max_workers=2, on_error=lambda k, e: reported.append(e)) as offload:
        with caplog.at_level(logging.WARNING, logger="tieredcache.offload"):
            for _ in range(1000):
                offload.register(OffloadKey.auto("refresh"), lambda: 1 / 0)
            assert offload.drain(WAIT)
        assert offload.stats().failed == 1000
    assert len(reported) == 1000
    records = [r for r in caplog.records if r.name == "tieredcache.offload"]
    assert 1 <= len(records) <= 3  # one per ten seconds
    assert records[0].exc_info is not None


def test_thousand_failing_race_losers_log_a_bounded_number_of_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ThreadPoolOffload(max_workers=2) as offload:
        cache, l2 = _failing_race(offload)
        with cache, caplog.at_level(logging.WARNING, logger="tieredcache"):
            for i in range(1000):
                cache.set(f"k{i}", i)  # L1 wins every race; L2's write fails behind it
            cache.drain()
            stats = cache.stats()
        offloaded = offload.stats()
    # Every failure is counted (fail-closed: the default)...
    assert stats["l2_write_errors"] == 1000
    assert l2.count("set") == 1000
    assert offloaded.failed == offloaded.adopted > 900  # the losers, each carried and counted
    # ...and only a bounded number of tracebacks is written.
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert 1 <= len(tracebacks) <= 3


def test_thousand_failing_race_losers_log_a_bounded_number_of_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with ThreadPoolOffload(max_workers=2) as offload:
        cache, _ = _failing_race(offload)
        with cache, caplog.at_level(logging.WARNING, logger="tieredcache"):
            for i in range(1000):
                cache.set(f"k{i}", i)
            cache.drain()
            assert cache.stats()["l2_write_errors"] == 1000
    records: list[t.Any] = [r for r in caplog.records if r.name.startswith("tieredcache")]
    assert len(records) <= 10
