"""Key listing and deletion by glob pattern: every backend, and a composition's tiers."""

from __future__ import annotations

import typing as t

import pytest

from tieredcache import MemoryBackend
from tieredcache import NullBackend
from tieredcache import TieredCache
from tieredcache import UnsupportedOperationError
from tieredcache import patterns
from tieredcache.backends.base import Backend
from tieredcache.config import build_cache
from tieredcache.errors import InvalidKeyError
from tieredcache.errors import TieredCacheError
from tieredcache.keyglob import compile_glob
from tieredcache.keyglob import escape_glob
from tieredcache.testing.clock import wait_until

KEYS = ["user:1", "user:2", "user:10", "users", "post:1", "a*b", "ünï:1"]


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("user:*", "user:10", True),
        ("user:*", "users", False),
        ("user:?", "user:1", True),
        ("user:?", "user:10", False),
        ("[up]*:1", "post:1", True),
        ("[^u]*", "user:1", False),
        ("[!u]*", "post:1", True),
        ("[a-c]", "b", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "aXb", False),
        ("*", "", True),
        ("x[", "x[", True),
    ],
)
def test_glob_syntax_is_redis_s(pattern: str, key: str, matches: bool) -> None:
    assert bool(compile_glob(pattern).match(key)) is matches


def test_escape_glob_matches_only_itself() -> None:
    assert compile_glob(escape_glob("a*[b]?")).match("a*[b]?")
    assert not compile_glob(escape_glob("a*")).match("ab")


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Iterator[Backend]:
    backend: Backend
    if request.param == "memory":
        backend = MemoryBackend(100)
    elif request.param == "sqlite":
        from tieredcache import SQLiteBackend

        backend = SQLiteBackend(str(tmp_path / "c.sqlite3"))
    else:
        from tieredcache import RedisBackend

        backend = RedisBackend.from_url(request.getfixturevalue("redis_url"), prefix="app:")
    yield backend
    backend.close()


def test_iter_keys_and_invalidate_pattern(store: Backend) -> None:
    store.set_many({key: key for key in KEYS}, ttl=60)
    store.set("user:gone", 1, ttl=60)
    store.delete("user:gone")
    assert sorted(store.iter_keys("user:*")) == ["user:1", "user:10", "user:2"]
    assert sorted(store.iter_keys()) == sorted(KEYS)
    assert list(store.iter_keys("a\\*b")) == ["a*b"]
    assert list(store.iter_keys("ünï:?")) == ["ünï:1"]
    assert store.invalidate_pattern("user:?") == 2
    assert store.get_many(KEYS).keys() == set(KEYS) - {"user:1", "user:2"}
    assert store.invalidate_pattern("nothing*") == 0
    with pytest.raises(InvalidKeyError):
        store.iter_keys(b"user:*")  # type: ignore[arg-type]


def test_expired_entries_are_not_listed_or_counted(tmp_path: t.Any) -> None:
    now = [1000.0]
    from tieredcache import SQLiteBackend

    for store in (
        MemoryBackend(10, timer=lambda: now[0]),
        SQLiteBackend(str(tmp_path / "c.sqlite3"), timer=lambda: now[0]),
    ):
        store.set("k:short", 1, ttl=5)
        store.set("k:long", 1, ttl=50)
        now[0] += 10
        assert list(store.iter_keys("k:*")) == ["k:long"]
        assert store.invalidate_pattern("k:*") == 1
        assert list(store.iter_keys("k:*")) == []
        store.close()


@pytest.mark.redis
def test_redis_patterns_stay_within_the_prefix(redis_url: str) -> None:
    import redis

    from tieredcache import RedisBackend

    raw = redis.Redis.from_url(redis_url)
    raw.set(b"other:user:1", b"foreign")
    raw.set(b"user:1", b"not an envelope")
    mine = RedisBackend.from_url(redis_url, prefix="app*:")
    bare = RedisBackend.from_url(redis_url)
    try:
        mine.set("user:1", 1)
        bare.set("user:2", 2)
        assert list(mine.iter_keys("user:*")) == ["user:1"]
        # The pattern names what to delete: every matching key, whatever it holds.
        assert bare.invalidate_pattern("user:*") == 2
        assert raw.get(b"user:1") is None
        assert raw.get(b"other:user:1") == b"foreign"
        assert mine.get("user:1") == 1
    finally:
        mine.close()
        bare.close()
        raw.close()


@pytest.mark.memcached
def test_memcached_cannot_list_keys(memcached_servers: list[tuple[str, int]]) -> None:
    from tieredcache import MemcachedBackend

    host, port = memcached_servers[0]
    store = MemcachedBackend([f"{host}:{port}"])
    try:
        for call in (lambda: store.iter_keys("*"), lambda: store.invalidate_pattern("*")):
            with pytest.raises(UnsupportedOperationError, match="tags") as info:
                call()
            assert isinstance(info.value, NotImplementedError)
            assert isinstance(info.value, TieredCacheError)
    finally:
        store.close()


def test_null_backend_lists_nothing() -> None:
    assert list(NullBackend().iter_keys("*")) == []
    assert NullBackend().invalidate_pattern("*") == 0


def test_composition_deletes_from_l2_then_l1(tmp_path: t.Any) -> None:
    from tieredcache import SQLiteBackend

    l1, l2 = MemoryBackend(100), SQLiteBackend(str(tmp_path / "c.sqlite3"))
    cache = TieredCache(l1, TieredCache(MemoryBackend(100), l2))
    try:
        cache.set_many({key: key for key in KEYS}, ttl=60)
        assert sorted(patterns.iter_keys(cache, "user:*")) == ["user:1", "user:10", "user:2"]
        assert patterns.invalidate_pattern(cache, "user:*") == 3
        assert list(l1.iter_keys("user:*")) == [] and list(l2.iter_keys("user:*")) == []
        assert cache.get("user:1") is None and cache.get("post:1") == "post:1"
    finally:
        cache.close()


@pytest.mark.redis
def test_pattern_deletion_reaches_other_processes_l1(redis_url: str) -> None:
    options = {"backplane": True}
    first, second = build_cache(redis_url, options), build_cache(redis_url, options)
    try:
        assert first.backplane.wait_connected(5) and second.backplane.wait_connected(5)
        first.set("user:1", "v")
        assert second.get("user:1") == "v"  # now in second's L1
        assert patterns.invalidate_pattern(first, "user:*") == 1
        assert wait_until(lambda: second.l1.get("user:1") is None, 5)
        assert second.get("user:1") is None
    finally:
        first.close()
        second.close()
