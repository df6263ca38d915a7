"""Resilience: fail-open, the circuit breaker, replay of failed writes, stale-while-revalidate."""

from __future__ import annotations

import logging
import threading
import time
import typing as t

import pytest

from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import ConfigurationError
from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import ThreadPoolOffload
from tieredcache import TieredCache
from tieredcache.breaker import CircuitBreaker
from tieredcache.breaker import CircuitOpenError
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.faults import FaultyBackend


class Monotonic:
    """A hand-moved monotonic clock for the breaker."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def offload() -> t.Iterator[ThreadPoolOffload]:
    pool = ThreadPoolOffload(max_workers=2)
    yield pool
    pool.close(wait=True)


def faulty_cache(offload: ThreadPoolOffload, **options: t.Any) -> tuple[TieredCache, FaultyBackend]:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    return TieredCache(MemoryBackend(), l2, offload=offload, **options), l2


# -- the breaker on its own ----------------------------------------------------------------


def test_breaker_opens_probes_and_closes() -> None:
    clock = Monotonic()
    closed: list[int] = []
    breaker = CircuitBreaker(failures=3, reset_after=5, clock=clock)
    breaker.on_close(lambda: closed.append(1))
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 5
    assert breaker.state == "half-open"
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # everyone else waits for its outcome
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 5
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and closed == [1]
    figures = breaker.stats()
    assert figures["times_opened"] == 2 and figures["refused"] == 2


@pytest.mark.parametrize("kwargs", [{"failures": 0}, {"reset_after": 0}, {"failures": True}])
def test_breaker_configuration(kwargs: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**kwargs)


def test_breaker_refuses_calls_to_the_tier(offload: ThreadPoolOffload) -> None:
    clock = Monotonic()
    cache, l2 = faulty_cache(
        offload, breaker=CircuitBreaker(failures=2, reset_after=1, clock=clock)
    )
    l2.fail()
    for _ in range(2):
        with pytest.raises(BackendUnavailableError):
            cache.get("k")
    calls = len(l2.calls)
    with pytest.raises(CircuitOpenError):
        cache.get("k")
    assert len(l2.calls) == calls  # refused without calling the tier
    assert cache.stats()["breaker"]["state"] == "open"
    l2.recover()
    clock.now += 1
    assert cache.get("k") is None  # the probe succeeds and closes the circuit
    assert cache.stats()["breaker"]["state"] == "closed"


def test_remote_l2_gets_a_breaker_by_default(redis_url: str) -> None:
    with TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url)) as cache:
        assert cache.stats()["breaker"]["state"] == "closed"
    assert "breaker" not in TieredCache(MemoryBackend(), MemoryBackend()).stats()


# -- fail-open -----------------------------------------------------------------------------


def test_fail_open_reads_become_misses(offload: ThreadPoolOffload) -> None:
    cache, l2 = faulty_cache(offload, fail_open=True)
    cache.set("k", "v")
    l2.fail("get")
    assert cache.get("k") == "v"  # L1 still serves
    assert cache.get("other") is None  # L2's failure is a miss
    assert cache.get_many(["k", "other"]) == {"k": "v"}
    assert cache.stats()["l2_read_errors"] == 2


def test_fail_open_writes_land_in_l1_and_are_replayed(offload: ThreadPoolOffload) -> None:
    reports: list[tuple[str, list[str]]] = []
    cache, l2 = faulty_cache(
        offload,
        fail_open=True,
        on_partial_failure=lambda tier, keys, exc: reports.append((tier, keys)),
    )
    cache.set("gone", "old")
    l2.fail("set", "delete", "touch")
    cache.set("k", "v1")
    cache.set("k", "v2")  # newest wins in the replay queue
    assert cache.delete("gone") is True
    cache.set_many({"a": 1, "b": 2})
    assert cache.l1.get("k") == "v2"
    assert ("l2", ["k"]) in reports
    assert cache.stats()["replay_pending"] == 4
    l2.recover()
    cache.replay()  # the gate's worker may be replaying at the same time: together, all
    assert cache.wait_idle(5)
    assert l2.inner.get("k") == "v2"
    assert l2.inner.get("gone") is None  # the delete made during the outage landed
    assert l2.inner.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert cache.stats()["replay_pending"] == 0 and cache.stats()["replayed"] == 4
    cache._check_invariants()


def test_replay_runs_by_itself_when_the_tier_answers_again(offload: ThreadPoolOffload) -> None:
    clock = Monotonic()
    cache, l2 = faulty_cache(
        offload, fail_open=True, breaker=CircuitBreaker(failures=1, reset_after=1, clock=clock)
    )
    cache.set("k", "old")
    l2.fail()
    assert cache.delete("k") is True
    assert cache.stats()["breaker"]["state"] == "open"
    l2.recover()
    clock.now += 1
    assert cache.get("probe") is None  # the half-open probe closes the circuit...
    assert cache.wait_idle(5)  # ...which wakes the replay
    assert l2.inner.get("k") is None
    assert cache.stats()["replayed"] == 1


def test_newer_write_supersedes_a_queued_replay(offload: ThreadPoolOffload) -> None:
    cache, l2 = faulty_cache(offload, fail_open=True)
    l2.fail("delete")
    cache.delete("k")
    l2.recover()
    cache.set("k", "after the outage")
    assert cache.wait_idle(5)
    assert l2.inner.get("k") == "after the outage"
    figures = cache.stats()
    # Superseded in the queue, or replayed by the worker just before the newer write.
    assert figures["replay_superseded"] + figures["replayed"] == 1


def test_replay_queue_is_bounded(
    offload: ThreadPoolOffload, caplog: pytest.LogCaptureFixture
) -> None:
    cache, l2 = faulty_cache(offload, fail_open=True, replay_limit=3)
    l2.fail("set")
    for i in range(5):
        cache.set(f"k{i}", i)
    figures = cache.stats()
    assert figures["replay_pending"] == 3 and figures["replay_dropped"] == 2
    with caplog.at_level(logging.WARNING, logger="tieredcache"):
        cache.close()  # L2 still fails: the writes it could not replay are reported
    assert "closing with 3 failed l2 write(s) not replayed" in caplog.text


def test_fail_open_add_is_decided_by_l1(offload: ThreadPoolOffload) -> None:
    cache, l2 = faulty_cache(offload, fail_open=True)
    cache.set("k", 1)
    l2.fail("add")
    assert cache.add("k", 2) is False
    assert cache.add("new", 3) is True
    assert cache.l1.get("new") == 3


def test_incr_fails_closed_even_when_fail_open(offload: ThreadPoolOffload) -> None:
    cache, l2 = faulty_cache(offload, fail_open=True)
    cache.set("n", 1)
    l2.fail("incr")
    with pytest.raises(BackendUnavailableError):
        cache.incr("n")


def test_fail_closed_raises(offload: ThreadPoolOffload) -> None:
    cache, l2 = faulty_cache(offload)
    l2.fail("get")
    with pytest.raises(BackendUnavailableError):
        cache.get("k")


# -- stale-while-revalidate, fail-safe, jitter --------------------------------------------


def test_stale_value_is_served_and_refreshed_once(offload: ThreadPoolOffload) -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), offload=offload)
    assert cache.get_or_set("k", lambda: "v1", ttl=10, stale_ttl=60) == "v1"
    clock.advance(11)  # stale now
    gate, entered = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_loader() -> str:
        calls.append(1)
        entered.set()
        assert gate.wait(5)
        return "v2"

    readers = [
        threading.Thread(target=lambda: cache.get_or_set("k", slow_loader, ttl=10, stale_ttl=60))
        for _ in range(8)
    ]
    results = [cache.get_or_set("k", slow_loader, ttl=10, stale_ttl=60)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(5)
    assert results == ["v1"]  # served at once, stale
    assert entered.wait(5)
    gate.set()
    assert offload.drain(5)
    assert calls == [1]  # one refresh for nine stale readers
    assert cache.get("k") == "v2"
    figures = cache.stats()
    assert figures["stale_hits"] == 9 and figures["refreshes"] == 1


def test_failed_refresh_keeps_serving_stale_until_the_maximum_age(
    offload: ThreadPoolOffload,
) -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), offload=offload)
    cache.get_or_set("k", lambda: "v1", ttl=10, stale_ttl=30)

    def broken() -> str:
        raise RuntimeError("source down")

    clock.advance(15)
    assert cache.get_or_set("k", broken, ttl=10, stale_ttl=30) == "v1"
    assert offload.drain(5)
    assert cache.stats()["refresh_errors"] == 1
    clock.advance(20)  # 35 s old: still within ttl + stale_ttl = 40
    assert cache.get_or_set("k", broken, ttl=10, stale_ttl=30) == "v1"
    assert offload.drain(5)
    clock.advance(6)  # past the maximum age: the loader's failure reaches the caller
    with pytest.raises(RuntimeError, match="source down"):
        cache.get_or_set("k", broken, ttl=10, stale_ttl=30)


def test_refresh_never_brings_back_a_deleted_key(offload: ThreadPoolOffload) -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), offload=offload)
    cache.get_or_set("k", lambda: "v1", ttl=10, stale_ttl=60)
    clock.advance(11)
    gate, entered = threading.Event(), threading.Event()

    def loader() -> str:
        entered.set()
        assert gate.wait(5)
        return "v2"

    assert cache.get_or_set("k", loader, ttl=10, stale_ttl=60) == "v1"
    assert entered.wait(5)
    cache.delete("k")  # while the refresh's loader runs
    gate.set()
    assert offload.drain(5)
    assert cache.get("k") is None
    cache._check_invariants()


def test_jitter_shortens_ttls_within_the_fraction() -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), jitter=0.2)
    lifetimes = set()
    for i in range(50):
        cache.set(f"k{i}", i, ttl=100)
        lifetimes.add(round(cache.l2.get_entry(f"k{i}").expires_at - clock(), 6))  # type: ignore[union-attr]
    assert all(80 <= life <= 100 for life in lifetimes)
    assert len(lifetimes) > 1
    with pytest.raises(ConfigurationError):
        TieredCache(MemoryBackend(), MemoryBackend(), jitter=1.0)


# -- a real Redis outage under a threaded workload -----------------------------------------


@pytest.mark.slow
def test_redis_outage_keeps_a_fail_open_cache_serving(fresh_redis_server: t.Any) -> None:
    l2 = RedisBackend.from_url(fresh_redis_server.url, socket_timeout=0.3, connect_timeout=0.3)
    offload = ThreadPoolOffload(max_workers=2)
    cache = TieredCache(
        MemoryBackend(),
        l2,
        fail_open=True,
        breaker=CircuitBreaker(failures=3, reset_after=0.5),
        offload=offload,
    )
    try:
        cache.set_many({f"k{i}": i for i in range(20)})
        fresh_redis_server.pause()  # SIGSTOP: calls time out rather than being refused
        stop = threading.Event()
        slowest: list[float] = []
        errors: list[BaseException] = []

        def worker() -> None:
            while not stop.is_set():
                for i in range(1, 20):  # k0 is deleted during the outage
                    start = time.monotonic()
                    try:
                        assert cache.get(f"k{i}") == i  # served from L1 throughout
                        cache.set(f"w{i}", i)
                    except BaseException as exc:
                        errors.append(exc)
                        return
                    slowest.append(time.monotonic() - start)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        assert wait_until(lambda: cache.stats()["breaker"]["state"] != "closed", 10)
        cache.delete("k0")  # a delete during the outage: queued, not lost
        assert cache.get("k0") is None
        fresh_redis_server.resume()
        # The gate's own replay worker probes L2: the breaker closes without any caller.
        assert wait_until(lambda: cache.stats()["breaker"]["state"] == "closed", 10)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert not errors
        # No call waits much past one call timeout (connect 0.3 s + reply 0.3 s).
        assert max(slowest) < 2
        assert wait_until(lambda: cache.stats()["replay_pending"] == 0, 10)
        assert offload.drain(10)
        assert l2.get("k0") is None  # the delete made during the outage landed
        assert l2.get("w5") == 5
    finally:
        cache.close()
        offload.close()


def test_paused_redis_times_out_when_fail_closed(fresh_redis_server: t.Any) -> None:
    l2 = RedisBackend.from_url(fresh_redis_server.url, socket_timeout=0.3)
    with TieredCache(MemoryBackend(), l2) as cache:
        cache.set("k", 1)
        cache.l1.clear()
        fresh_redis_server.pause()
        try:
            with pytest.raises(BackendTimeoutError):
                cache.get("k")
        finally:
            fresh_redis_server.resume()


def test_a_call_to_a_hung_redis_waits_one_timeout_not_more(fresh_redis_server: t.Any) -> None:
    # A timeout is not retried: the wait is bounded by socket_timeout (a retry would double it).
    timeout = 1.0
    backend = RedisBackend.from_url(fresh_redis_server.url, socket_timeout=timeout)
    try:
        backend.set("k", 1)
        fresh_redis_server.pause()
        for call in (lambda: backend.get("k"), lambda: backend.set("k", 2)):
            start = time.monotonic()
            with pytest.raises(BackendTimeoutError):
                call()
            assert time.monotonic() - start < 1.8 * timeout
    finally:
        fresh_redis_server.resume()
        backend.close()
