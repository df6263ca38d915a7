"""Concurrent L1 misses of one key share one L2 read (tiered/readflight.py), on a real Redis.

L2 is a :class:`FaultyBackend` around a real :class:`RedisBackend`: it counts the reads that
reach Redis, and holds them at a gate so that the other callers arrive while one is in flight.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import typing as t

import pytest

from tieredcache import MemoryBackend
from tieredcache import RaceRead
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.testing.clock import wait_until
from tieredcache.testing.faults import FaultyBackend

THREADS = 16
PATIENCE = 10.0


@pytest.fixture
def l2(redis_url: str) -> t.Iterator[FaultyBackend]:
    faulty = FaultyBackend(RedisBackend.from_url(redis_url, prefix="rf:"), name="l2")
    yield faulty
    faulty.release()


def make_cache(l2: FaultyBackend, **options: t.Any) -> TieredCache:
    return TieredCache(MemoryBackend(), l2, **options)


def run_together(
    fn: t.Callable[[], t.Any], n: int = THREADS
) -> list[concurrent.futures.Future[t.Any]]:
    barrier = threading.Barrier(n)

    def call() -> t.Any:
        barrier.wait(PATIENCE)
        return fn()

    pool = concurrent.futures.ThreadPoolExecutor(n)
    futures = [pool.submit(call) for _ in range(n)]
    pool.shutdown(wait=False)
    return futures


def keys_read(l2: FaultyBackend, key: str) -> int:
    return sum(keys.count(key) for op, keys in l2.calls if op == "get")


@pytest.mark.parametrize("batch", [False, True], ids=["get", "get_many"])
def test_sixteen_threads_missing_one_key_make_one_l2_read(l2: FaultyBackend, batch: bool) -> None:
    with make_cache(l2) as cache:
        cache.l2.set("hot", "value", ttl=60)
        l2.calls.clear()
        gate = l2.hold("get")
        read = (lambda: cache.get_many(["hot"]).get("hot")) if batch else (lambda: cache.get("hot"))
        futures = run_together(read)
        assert l2.entered["get"].wait(PATIENCE)
        # Every other thread is waiting for the one read in flight before it is let go.
        assert wait_until(lambda: cache.stats()["l2_reads_shared"] == THREADS - 1, PATIENCE)
        gate.set()
        assert [f.result(PATIENCE) for f in futures] == ["value"] * THREADS
        assert keys_read(l2, "hot") == 1 and l2.count("get") == 1
        stats = cache.stats()
        assert stats["l2_reads_led"] == 1 and stats["l2_hits"] == THREADS
        assert stats["refills"] == 1 and cache.l1.get("hot") == "value"
        cache._check_invariants()


def test_overlapping_batches_read_each_key_once(l2: FaultyBackend) -> None:
    with make_cache(l2) as cache:
        cache.l2.set_many({"a": 1, "b": 2, "c": 3}, ttl=60)
        l2.calls.clear()
        gate = l2.hold("get")
        futures = run_together(lambda: cache.get_many(["a", "b", "c"]), 8)
        assert l2.entered["get"].wait(PATIENCE)
        # However the batches interleave, each key has one leader while the reads are held.
        assert wait_until(lambda: cache.stats()["l2_reads_shared"] == 8 * 3 - 3, PATIENCE)
        gate.set()
        for future in futures:
            assert future.result(PATIENCE) == {"a": 1, "b": 2, "c": 3}
        assert [keys_read(l2, k) for k in "abc"] == [1, 1, 1]
        assert cache.stats()["l2_reads_led"] == 3
        cache._check_invariants()


def test_a_write_made_before_waiting_starts_a_new_read(l2: FaultyBackend) -> None:
    with make_cache(l2) as cache:
        cache.set("k", "old", ttl=60)
        cache.l1.delete("k")
        gate = l2.hold("get")
        pool = concurrent.futures.ThreadPoolExecutor(2)
        try:
            first = pool.submit(cache.get, "k")
            assert l2.entered["get"].wait(PATIENCE)  # its read of "old" is in flight
            cache.set("k", "new", ttl=60)  # lands in both layers while that read waits
            cache.l1.delete("k")  # e.g. an invalidation: the next get misses L1 again
            l2.entered["get"].clear()
            second = pool.submit(cache.get, "k")
            assert l2.entered["get"].wait(PATIENCE)  # it did not join: a read of its own
            gate.set()
            assert second.result(PATIENCE) == "new"
            assert first.result(PATIENCE) in ("old", "new")
        finally:
            pool.shutdown()
        stats = cache.stats()
        assert stats["l2_reads_led"] == 2 and stats["l2_reads_shared"] == 0
        # The first read began before the write: it must not refill L1 with "old".
        assert cache.get("k") == "new"
        cache._check_invariants()


def test_a_read_that_began_while_a_write_ran_is_not_shared(l2: FaultyBackend) -> None:
    with make_cache(l2) as cache:
        cache.set("k", "old", ttl=60)
        cache.l1.delete("k")
        set_gate = l2.hold("set")
        pool = concurrent.futures.ThreadPoolExecutor(3)
        try:
            writing = pool.submit(cache.set, "k", "new", 60)
            assert l2.entered["set"].wait(PATIENCE)  # the L2 leg of the write is in flight
            cache.l1.delete("k")
            get_gate = l2.hold("get")
            reading = pool.submit(cache.get, "k")  # reads L2 before the write landed
            assert l2.entered["get"].wait(PATIENCE)
            set_gate.set()
            writing.result(PATIENCE)
            l2.entered["get"].clear()
            again = pool.submit(cache.get, "k")  # the writer's own read after its write
            assert l2.entered["get"].wait(PATIENCE)
            get_gate.set()
            assert again.result(PATIENCE) == "new"
            reading.result(PATIENCE)
        finally:
            l2.release()
            pool.shutdown()
        assert cache.stats()["l2_reads_shared"] == 0
        cache._check_invariants()


def test_waiters_share_the_leaders_error(l2: FaultyBackend) -> None:
    with make_cache(l2, breaker=None) as cache:
        l2.fail("get")
        gate = l2.hold("get")
        futures = run_together(lambda: cache.get("k"), 4)
        assert l2.entered["get"].wait(PATIENCE)
        assert wait_until(lambda: cache.stats()["l2_reads_shared"] == 3, PATIENCE)
        gate.set()
        for future in futures:
            with pytest.raises(BackendUnavailableError):
                future.result(PATIENCE)
        assert l2.count("get") == 1 and cache.stats()["errors"] == 4
        cache._check_invariants()


class QuickFaultyBackend(FaultyBackend):
    """Its calls are said to wait at most 0.2 s (the bound a waiter waits for a leader)."""

    @property
    def call_timeout(self) -> float | None:
        return 0.2


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_waiter_waits_at_most_the_l2_timeout(redis_url: str, fail_open: bool) -> None:
    l2 = QuickFaultyBackend(RedisBackend.from_url(redis_url, prefix="rf:"), name="l2")
    with make_cache(l2, fail_open=fail_open) as cache:
        cache.l2.set("k", "v", ttl=60)
        gate = l2.hold("get")
        pool = concurrent.futures.ThreadPoolExecutor(2)
        try:
            leader = pool.submit(cache.get, "k")
            assert l2.entered["get"].wait(PATIENCE)
            waiter = pool.submit(cache.get, "k")
            if fail_open:
                assert waiter.result(PATIENCE) is None
                assert cache.stats()["l2_read_errors"] == 1
            else:
                with pytest.raises(BackendTimeoutError):
                    waiter.result(PATIENCE)
            gate.set()
            assert leader.result(PATIENCE) == "v"
        finally:
            pool.shutdown()
        cache._check_invariants()


def test_a_leader_whose_tag_check_fails_ends_its_read(l2: FaultyBackend) -> None:
    # The leader's L2 read succeeds, then checking the entry's tags fails (the clock of the
    # tier raises once): the read still ends, so the key's next reads do not wait for it.
    failures = []

    def clock() -> float:
        if failures:
            raise failures.pop()
        return time.time()

    cache = TieredCache(MemoryBackend(timer=clock), l2)
    try:
        cache.set("k", "v", tags=["t"])
        cache.l1.delete("k")
        failures.append(RuntimeError("the clock failed"))
        with pytest.raises(RuntimeError, match="the clock failed"):
            cache.get("k")
        answers: list[t.Any] = []
        reader = threading.Thread(target=lambda: answers.append(cache.get("k")), daemon=True)
        reader.start()
        reader.join(PATIENCE)
        assert answers == ["v"]
        cache.set("k", "new", tags=["t"])
        cache.l1.delete("k")
        assert cache.get("k") == "new"
    finally:
        cache.close()


def test_a_read_race_never_shares_its_slower_leg_after_it_returned() -> None:
    # RaceRead with an L1 in another process returns once L1 answers; its L2 leg still
    # reads. A write made after that, then a read of the key by the writer: the read may
    # not take the slower leg's answer, which is older than the write.
    class RemoteL1(MemoryBackend):
        local = False

    answered, deliver = threading.Event(), threading.Event()

    class SlowL2(MemoryBackend):
        held = False

        def get_entry(self, key: str) -> t.Any:
            entry = super().get_entry(key)
            if self.held and threading.current_thread().name.startswith("pool"):
                self.held = False
                answered.set()  # L2 has answered the old value, delivered late
                deliver.wait(PATIENCE)
            return entry

    l2 = SlowL2()
    executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="pool")
    cache = TieredCache(RemoteL1(), l2, read=RaceRead(), executor=executor)
    try:
        cache.set("a", "old")
        l2.held = True
        assert cache.get_many(["a"]) == {"a": "old"}  # L1 won; the L2 leg is still reading
        assert answered.wait(PATIENCE)
        cache.set("a", "new")
        cache.l1.delete("a")
        answers: list[t.Any] = []
        reader = threading.Thread(target=lambda: answers.append(cache.get("a")), daemon=True)
        reader.start()
        reader.join(PATIENCE)  # a read of its own needs no late answer
        deliver.set()
        reader.join(PATIENCE)
        assert answers == ["new"]
    finally:
        deliver.set()
        cache.close()
        executor.shutdown()
