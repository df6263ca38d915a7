"""Coherence across processes: a TieredCache with a backplane evicts what others change."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import typing as t

import pytest
import redis

from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import RedisBackplane
from tieredcache import RedisLock
from tieredcache import TieredCache
from tieredcache.testing.clock import wait_until


def make_cache(url: str, **options: t.Any) -> TieredCache:
    backplane = RedisBackplane.from_url(url, channel="test:invalidate")
    cache = TieredCache(
        MemoryBackend(), RedisBackend.from_url(url, prefix="coh:"), backplane=backplane, **options
    )
    assert backplane.wait_connected(5)
    return cache


@pytest.fixture
def pair(redis_url: str) -> t.Iterator[tuple[TieredCache, TieredCache]]:
    # Two caches with their own L1s sharing one Redis: as two processes would.
    a, b = make_cache(redis_url), make_cache(redis_url)
    yield a, b
    a.close()
    b.close()


def test_a_write_elsewhere_evicts_the_local_copy(pair: tuple[TieredCache, TieredCache]) -> None:
    a, b = pair
    a.set("k", "v1")
    assert b.get("k") == "v1"  # now in b's L1
    a.set("k", "v2")
    # Small values are updated in place, larger ones evicted: never the old value again.
    assert wait_until(lambda: b.l1.get("k") != "v1", 5)
    assert b.get("k") == "v2"
    a.delete("k")
    assert wait_until(lambda: b.l1.get("k") is None, 5)
    assert b.get("k") is None
    assert b.stats()["invalidations_received"] >= 2


def test_batches_touch_and_clear_propagate(pair: tuple[TieredCache, TieredCache]) -> None:
    a, b = pair
    a.set_many({"x": 1, "y": 2})
    assert b.get_many(["x", "y"]) == {"x": 1, "y": 2}
    a.delete_many(["x", "y"])
    assert wait_until(lambda: b.l1.get_many(["x", "y"]) == {}, 5)
    a.set("z", 3)
    assert b.get("z") == 3
    a.clear()
    assert wait_until(lambda: b.l1.get("z") is None, 5)


def test_own_messages_do_not_evict(pair: tuple[TieredCache, TieredCache]) -> None:
    a, _ = pair
    a.set("k", "v")
    a.set("other", 1)
    assert a.wait_idle(5)  # announced (together, or one by one)
    assert wait_until(lambda: a.backplane.stats()["ignored_own"] >= 1, 5)
    assert a.l1.get("k") == "v"


def test_lost_connection_flushes_l1(fresh_redis_server: t.Any) -> None:
    cache = make_cache(fresh_redis_server.url)
    try:
        cache.set("k", "v")
        assert cache.l1.get("k") == "v"
        fresh_redis_server.kill()
        # Invalidations may be missed while disconnected: nothing in L1 is trusted.
        assert wait_until(lambda: cache.l1.get("k") is None, 10)
        fresh_redis_server.start()
        assert wait_until(lambda: cache.backplane.stats()["connected"], 15)
    finally:
        cache.close()


CHILD = textwrap.dedent(
    """
    import sys
    from tieredcache import MemoryBackend, RedisBackend, RedisBackplane, TieredCache
    url = sys.argv[1]
    cache = TieredCache(MemoryBackend(), RedisBackend.from_url(url, prefix="coh:"),
                        backplane=RedisBackplane.from_url(url, channel="test:invalidate"))
    cache.backplane.wait_connected(5)
    for line in sys.stdin:
        command, key, *rest = line.split()
        if command == "set":
            cache.set(key, rest[0])
        elif command == "delete":
            cache.delete(key)
        print("ok", flush=True)
    cache.close()
    """
)


def test_another_process_invalidates_this_one(redis_url: str) -> None:
    cache = make_cache(redis_url)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        latencies = []
        for i in range(20):
            cache.set("shared", "mine")
            assert cache.get("shared") == "mine"
            start = time.monotonic()
            child.stdin.write(f"set shared theirs{i}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "ok"
            assert wait_until(lambda: cache.l1.get("shared") != "mine", 5)
            latencies.append(time.monotonic() - start)
            assert cache.get("shared") == f"theirs{i}"
        child.stdin.write("delete shared\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ok"
        assert wait_until(lambda: cache.get("shared") is None, 5)
        print(f"invalidation seen within {max(latencies) * 1000:.1f} ms (max of 20)")
    finally:
        child.stdin.close()
        assert child.wait(10) == 0
        child.stdout.close()
        cache.close()


LOADER = textwrap.dedent(
    """
    import sys
    import redis
    from tieredcache import MemoryBackend, RedisBackend, RedisLock, TieredCache
    url, start = sys.argv[1], sys.argv[2]
    raw = redis.Redis.from_url(url)
    cache = TieredCache(MemoryBackend(), RedisBackend.from_url(url, prefix="coh:"))
    lock = RedisLock.from_url(url, ttl=10, wait_timeout=10)
    def loader():
        raw.rpush("coh:loads", b"1")
        raw.blpop([start], timeout=10)  # hold the lock until every process is waiting
        return "expensive"
    raw.rpush("coh:ready", b"1")
    print(cache.get_or_set("report", loader, ttl=60, lock=lock), flush=True)
    raw.close(); lock.close(); cache.close()
    """
)


def test_get_or_set_with_a_redis_lock_loads_once_across_processes(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", LOADER, redis_url, "coh:start"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        assert wait_until(lambda: raw.llen("coh:ready") == 3, 20)
        assert wait_until(lambda: raw.llen("coh:loads") == 1, 20)
        raw.rpush("coh:start", b"go")
        outputs = [child.communicate(timeout=30)[0].strip() for child in children]
        assert outputs == ["expensive"] * 3
        assert raw.llen("coh:loads") == 1
        assert all(child.returncode == 0 for child in children)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        raw.close()


def test_lock_waiters_time_out_cleanly(redis_url: str) -> None:
    from tieredcache import LockTimeoutError

    lock = RedisLock.from_url(redis_url, ttl=30, wait_timeout=0.3)
    holder = RedisLock.from_url(redis_url, ttl=30)
    try:
        with TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url, prefix="coh:")) as cache:
            token = holder.acquire("slow")
            assert token is not None
            with pytest.raises(LockTimeoutError):
                cache.get_or_set("slow", lambda: "never", lock=lock)
            holder.release("slow", token)
            assert cache.get_or_set("slow", lambda: "loaded", lock=lock) == "loaded"
    finally:
        lock.close()
        holder.close()
