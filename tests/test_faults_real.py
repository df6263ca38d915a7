"""Guarantees under faults, on a real redis-server: fork after use, outages (SIGSTOP), replay,
the backplane, server-side data errors and latency bounds.

Each test names the defect it guards against. Servers are the tests' own (``fresh_*``
fixtures), so they can be paused, resumed and killed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import typing as t
import uuid

import pytest
import redis

from tieredcache import CircuitBreaker
from tieredcache import MemoryBackend
from tieredcache import OptimisticParallelWrite
from tieredcache import ParallelRead
from tieredcache import RaceRead
from tieredcache import RaceWrite
from tieredcache import RedisBackend
from tieredcache import SequentialWrite
from tieredcache import TieredCache
from tieredcache.errors import BackendUnavailableError
from tieredcache.policies.write import LoserPolicy
from tieredcache.redis.backplane import RedisBackplane
from tieredcache.testing.clock import wait_until
from tieredcache.testing.faults import FaultyBackend
from tieredcache.testing.fork import report_from_child

PATIENCE = 10.0
TIMEOUT = 0.25  # the L2's socket timeout in the outage tests


def _cache(url: str, **options: t.Any) -> TieredCache:
    l2 = RedisBackend.from_url(url, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
    return TieredCache(MemoryBackend(), l2, **options)


def _call_bound(cache: TieredCache) -> float:
    bound = cache.call_timeout
    assert bound is not None
    return bound


# == 1. fork after use =====================================================================

POLICIES: dict[str, dict[str, t.Any]] = {
    "sequential": {"write": SequentialWrite()},
    "parallel": {"write": OptimisticParallelWrite()},
    "race-offload": {"write": RaceWrite()},
    "race-drop": {"write": RaceWrite(LoserPolicy.DROP)},
    "race-read": {"read": RaceRead(), "write": OptimisticParallelWrite()},
    "parallel-read": {"read": ParallelRead(), "write": RaceWrite()},
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_cache_used_before_fork_works_in_the_child(redis_url: str, policy: str) -> None:
    cache = TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url), **POLICIES[policy])
    prefix = uuid.uuid4().hex
    # Use everything before the fork: the executor, the offload, the ordering table.
    for i in range(20):
        cache.set(f"{prefix}:parent{i}", i)
    assert cache.get(f"{prefix}:parent3") == 3
    assert cache.drain(PATIENCE)

    def child() -> bytes:
        for i in range(20):
            cache.set(f"{prefix}:child{i}", i)
        drained = cache.drain(PATIENCE)
        landed = RedisBackend.from_url(redis_url).get_many(
            [f"{prefix}:child{i}" for i in range(20)]
        )
        expected = 20 if policy != "race-drop" else len(landed)
        ok = drained and len(landed) == expected and cache.get(f"{prefix}:child7") == 7
        cache.l1.clear()  # the reads go to L2 through the read policy
        read_back = cache.get_many([f"{prefix}:parent{i}" for i in range(20)])
        ok = ok and (policy == "race-drop" or len(read_back) == 20)
        return b"ok" if ok else f"drained={drained} landed={len(landed)}".encode()

    try:
        assert report_from_child(child, PATIENCE * 2) == b"ok"
    finally:
        cache.close()
    if policy != "race-drop":  # DROP may leave L2 unwritten, by design
        raw = RedisBackend.from_url(redis_url)
        assert raw.get(f"{prefix}:parent3") == 3
        raw.close()


# == 2. a delete made during an outage does not come back ==================================


@pytest.mark.slow
def test_deletes_made_during_an_outage_stay_deleted(fresh_redis_server: t.Any) -> None:
    cache = _cache(fresh_redis_server.url, fail_open=True)
    keys = [f"k{i}" for i in range(50)]
    try:
        cache.set_many({k: "old" for k in keys})
        fresh_redis_server.pause()
        try:
            for key in keys:
                cache.delete(key)
            assert cache.stats()["replay_pending"] == 50
            # While L2 is down and while it recovers, no read brings the old value back.
            assert all(cache.get(k) is None for k in keys)
        finally:
            fresh_redis_server.resume()
        assert all(cache.get(k) is None for k in keys)
        assert cache.get_many(keys) == {}
        assert cache.wait_idle(PATIENCE)
        assert all(cache.get(k) is None for k in keys)
        assert cache.l2.get_many(keys) == {}
        assert cache.l1.get_many(keys) == {}
    finally:
        cache.close()


# == 3. replay has a trigger of its own ======================================================


@pytest.mark.slow
def test_replay_runs_after_recovery_without_any_l2_call(fresh_redis_server: t.Any) -> None:
    cache = _cache(fresh_redis_server.url, fail_open=True)
    raw = redis.Redis.from_url(fresh_redis_server.url)
    try:
        cache.set("k", "old")
        fresh_redis_server.pause()
        try:
            cache.set("k", "new")  # lands in L1; L2 keeps "old"
        finally:
            fresh_redis_server.resume()
        # The process only hits L1 from now on; the gate replays by itself.
        assert cache.get("k") == "new"
        # (A replay attempt that timed out just as the server resumed may have landed and
        # still be queued again: the queue empties at the next attempt.)
        assert cache.wait_idle(PATIENCE)
        assert cache.l2.get("k") == "new"
        assert cache.stats()["replay_pending"] == 0
        assert raw.exists("k")
    finally:
        raw.close()
        cache.close()


# == 4. announce only after L2 has the write =================================================


def _pair(
    url: str, channel: str, **options: t.Any
) -> tuple[TieredCache, TieredCache, FaultyBackend]:
    slow = FaultyBackend(RedisBackend.from_url(url), "l2")
    writer = TieredCache(
        MemoryBackend(), slow, backplane=RedisBackplane.from_url(url, channel=channel), **options
    )
    reader = TieredCache(
        MemoryBackend(),
        RedisBackend.from_url(url),
        backplane=RedisBackplane.from_url(url, channel=channel),
    )
    assert writer.backplane is not None and reader.backplane is not None
    assert writer.backplane.wait_connected(PATIENCE) and reader.backplane.wait_connected(PATIENCE)
    return writer, reader, slow


def test_a_race_loser_is_announced_only_after_it_lands(redis_url: str) -> None:
    writer, reader, slow = _pair(redis_url, uuid.uuid4().hex, write=RaceWrite())
    try:
        writer.set("k", "old")
        assert wait_until(lambda: writer.stats()["backplane"]["published"] >= 1, PATIENCE)
        assert reader.get("k") == "old"  # now in the reader's L1
        received = reader.stats()["invalidations_received"]
        held = slow.hold("set")
        writer.set("k", "new")  # returns when the L1 leg wins; the L2 leg is held
        assert slow.entered["set"].wait(PATIENCE)
        assert writer.get("k") == "new"
        # Nothing announced while L2 still holds "old": the reader keeps its copy, which is
        # still L2's value, instead of evicting and re-reading "old" for a whole TTL.
        assert writer.stats()["backplane"]["published"] == 1
        held.set()
        slow.release("set")
        assert writer.drain(PATIENCE)
        assert wait_until(lambda: reader.stats()["invalidations_received"] > received, PATIENCE)
        assert reader.get("k") == "new"
    finally:
        writer.close()
        reader.close()


def test_a_failed_write_is_announced_when_its_replay_lands(redis_url: str) -> None:
    writer, reader, slow = _pair(redis_url, uuid.uuid4().hex, fail_open=True)
    try:
        writer.set("k", "old")
        assert wait_until(lambda: writer.stats()["backplane"]["published"] >= 1, PATIENCE)
        assert reader.get("k") == "old"
        slow.fail("set")
        writer.set("k", "new")
        assert writer.wait_idle(0.2) is False  # the replay cannot land yet
        assert writer.stats()["backplane"]["published"] == 1
        assert reader.get("k") == "old"
        slow.recover("set")
        assert writer.wait_idle(PATIENCE)
        assert wait_until(lambda: reader.get("k") == "new", PATIENCE)
        assert writer.stats()["backplane"]["published"] == 2
    finally:
        writer.close()
        reader.close()


# == 5. a backplane publish never holds a write ==============================================


@pytest.mark.slow
def test_writes_stay_fast_while_the_backplane_server_is_frozen(fresh_redis_server: t.Any) -> None:
    url = fresh_redis_server.url
    channel = uuid.uuid4().hex
    # The documented backplane settings: a 5 s socket timeout, far above the L2's.
    writer = _cache(
        url,
        fail_open=True,
        breaker=CircuitBreaker(failures=2, reset_after=60),
        backplane=RedisBackplane.from_url(url, channel=channel, socket_timeout=5.0),
    )
    try:
        assert writer.backplane is not None and writer.backplane.wait_connected(PATIENCE)
        fresh_redis_server.pause()
        try:
            bound = _call_bound(writer)
            durations = []
            for i in range(10):
                start = time.monotonic()
                writer.set(f"k{i}", i)
                writer.delete(f"gone{i}")
                durations.append(time.monotonic() - start)
            # The first calls wait for L2 (one timeout each); once the breaker is open they
            # do not try L2 at all, and no call ever waits for the publish (5 s).
            assert max(durations) < 2 * bound + 0.5
            assert max(durations[3:]) < bound
            breaker = writer.stats()["breaker"]
            assert breaker["state"] == "open"
            assert breaker["refused"] >= 2 * len(durations[3:])
        finally:
            fresh_redis_server.resume()
    finally:
        writer.close()


# == 6. a data error about one key is not an outage ==========================================


def test_a_foreign_key_of_another_type_is_a_miss_and_leaves_the_breaker_closed(
    redis_url: str,
) -> None:
    cache = TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url, prefix="app:"))
    raw = redis.Redis.from_url(redis_url)
    try:
        raw.hset("app:foreign", "field", "value")  # WRONGTYPE for GET
        cache.set("fine", 1)
        for _ in range(20):
            assert cache.get("foreign") is None
            assert cache.get_many(["foreign", "fine"]) == {"fine": 1}
        assert cache.stats()["breaker"]["state"] == "closed"
        cache.l1.clear()
        assert cache.get("fine") == 1  # every other key is still served from L2
    finally:
        raw.close()
        cache.close()


# == 7. latency bounds: hot keys and get_or_set ==============================================


@pytest.mark.slow
@pytest.mark.parametrize("breaker", ["breaker", "no-breaker"])
@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_sixteen_writers_of_one_hot_key_each_wait_about_one_timeout(
    fresh_redis_server: t.Any, breaker: str, fail_open: bool
) -> None:
    cache = _cache(
        fresh_redis_server.url,
        fail_open=fail_open,
        breaker=CircuitBreaker() if breaker == "breaker" else None,
    )
    bound = _call_bound(cache)
    cache.set("hot", 0)
    barrier = threading.Barrier(16)
    waits: list[float] = []
    outcomes: list[str] = []

    def writer(i: int) -> None:
        barrier.wait()
        start = time.monotonic()
        try:
            cache.set("hot", i)
            outcomes.append("ok")
        except BackendUnavailableError:
            outcomes.append("unavailable")
        waits.append(time.monotonic() - start)

    fresh_redis_server.pause()
    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE * 2)
    finally:
        fresh_redis_server.resume()
    try:
        assert len(waits) == 16
        assert max(waits) < bound + 1.0, (bound, sorted(waits))  # 16 threads on 2 cores
        assert set(outcomes) == ({"ok"} if fail_open else {"unavailable"})
        if fail_open:
            # The newest write reaches L2 once it answers again.
            assert cache.wait_idle(PATIENCE)
            assert cache.l2.get("hot") == cache.get("hot")
    finally:
        cache.close()


@pytest.mark.slow
def test_fail_open_get_or_set_waits_at_most_one_timeout(fresh_redis_server: t.Any) -> None:
    cache = _cache(fresh_redis_server.url, fail_open=True, breaker=None)
    bound = _call_bound(cache)
    reads: list[str] = []
    fresh_redis_server.pause()
    try:
        start = time.monotonic()
        assert cache.get_or_set("k", lambda: reads.append("loaded") or "value", ttl=60) == "value"
        elapsed = time.monotonic() - start
    finally:
        fresh_redis_server.resume()
    try:
        assert elapsed < bound + 0.5, elapsed
        assert reads == ["loaded"]
        assert cache.get("k") == "value"
        assert cache.wait_idle(PATIENCE)
        assert cache.l2.get("k") == "value"
    finally:
        cache.close()


def test_get_or_set_reads_l2_once_before_loading(redis_url: str) -> None:
    counting = FaultyBackend(RedisBackend.from_url(redis_url), "l2")
    cache = TieredCache(MemoryBackend(), counting)
    try:
        assert cache.get_or_set("k", lambda: "v") == "v"
        assert counting.count("get") == 1
    finally:
        cache.close()


# == nothing is lost at interpreter exit =====================================================


def test_writes_waiting_for_replay_land_at_interpreter_exit(tmp_path: t.Any) -> None:
    path = tmp_path / "l2.sqlite"
    code = f"""
        from tieredcache import MemoryBackend, SQLiteBackend, TieredCache
        from tieredcache.testing.faults import FaultyBackend

        l2 = FaultyBackend(SQLiteBackend({str(path)!r}), "l2")
        cache = TieredCache(MemoryBackend(), l2, fail_open=True)
        cache.gate.background = False  # only the exit hook may replay
        l2.fail("set", "delete")
        cache.set("written", "during the outage")
        cache.delete("gone")
        assert cache.stats()["replay_pending"] == 2
        l2.recover()
        # no close(), no replay(): the script just ends
    """
    from tieredcache import SQLiteBackend

    with SQLiteBackend(str(path)) as seed:
        seed.set("gone", "before the outage")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    with SQLiteBackend(str(path)) as check:
        assert check.get("written") == "during the outage"
        assert check.get("gone") is None
