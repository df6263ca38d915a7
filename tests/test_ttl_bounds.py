"""TTLs are checked at the boundary: one too long for any store writes no tier at all."""

from __future__ import annotations

import sqlite3
import typing as t

import pytest
import redis

from tieredcache import ConfigurationError
from tieredcache import MemcachedBackend
from tieredcache import MemoryBackend
from tieredcache import RaceWrite
from tieredcache import RedisBackend
from tieredcache import SQLiteBackend
from tieredcache import TieredCache
from tieredcache.entry import MAX_TTL
from tieredcache.entry import validate_ttl

TOO_LONG = [1e16, MAX_TTL + 1, 2**70, 10**400]


@pytest.mark.parametrize("ttl", TOO_LONG, ids=["1e16", "max+1", "2**70", "10**400"])
def test_validate_ttl_refuses_what_no_store_accepts(ttl: t.Any) -> None:
    with pytest.raises(ConfigurationError, match="100 years"):
        validate_ttl(ttl)
    assert validate_ttl(MAX_TTL) == MAX_TTL
    assert validate_ttl(-1e300) == -1e300  # "do not store", whatever its size


@pytest.fixture
def tiered(redis_url: str) -> t.Iterator[tuple[TieredCache, MemoryBackend, RedisBackend]]:
    l1 = MemoryBackend()
    l2 = RedisBackend.from_url(redis_url, prefix="ttl:")
    with TieredCache(l1, l2) as cache:
        yield cache, l1, l2


@pytest.mark.parametrize("ttl", TOO_LONG, ids=["1e16", "max+1", "2**70", "10**400"])
def test_too_long_ttl_leaves_every_tier_unchanged(
    tiered: tuple[TieredCache, MemoryBackend, RedisBackend], ttl: t.Any
) -> None:
    cache, l1, l2 = tiered
    cache.set("k", "old", ttl=60)
    cache.set("other", "old", ttl=60)
    writes = [
        lambda: cache.set("k", "new", ttl=ttl),
        lambda: cache.set_many({"k": "new", "other": "new"}, ttl=ttl),
        lambda: cache.add("fresh", "new", ttl=ttl),
        lambda: cache.touch("k", ttl),
        lambda: cache.get_or_set("fresh", lambda: "new", ttl=ttl),
    ]
    for write in writes:
        with pytest.raises(ConfigurationError):
            write()
    for tier in (l1, l2):
        assert tier.get_many(["k", "other", "fresh"]) == {"k": "old", "other": "old"}
        entry = tier.get_entry("k")
        assert entry is not None and entry.expires_at is not None
        assert entry.expires_at < cache.timer() + 61
    with pytest.raises(ConfigurationError):
        TieredCache(MemoryBackend(), MemoryBackend(), default_ttl=ttl)


def test_too_long_ttl_is_refused_before_a_racing_write(redis_url: str) -> None:
    l1 = MemoryBackend()
    l2 = RedisBackend.from_url(redis_url, prefix="race:")
    with TieredCache(l1, l2, write=RaceWrite()) as cache:
        cache.set("k", "old")
        with pytest.raises(ConfigurationError):
            cache.set("k", "new", ttl=1e16)
        cache.drain()
        assert l1.get("k") == "old" and l2.get("k") == "old"


def test_every_store_accepts_the_longest_ttl(
    redis_url: str, memcached_servers: list[tuple[str, int]], tmp_path: t.Any
) -> None:
    stores = [
        RedisBackend.from_url(redis_url, prefix="max:"),
        MemcachedBackend(memcached_servers, prefix="max:"),
        SQLiteBackend(tmp_path / "max.sqlite3"),
        MemoryBackend(),
    ]
    for store in stores:
        with store:
            store.set("k", "v", ttl=MAX_TTL)
            entry = store.get_entry("k")
            assert entry is not None and entry.value == "v"
            assert entry.expires_at == pytest.approx(store.timer() + MAX_TTL, abs=5)
            assert store.touch("k", MAX_TTL)
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.pttl(b"max:k") > (MAX_TTL - 60) * 1000
    assert sqlite3.sqlite_version  # the file store keeps the time as a REAL


def test_an_entry_beyond_any_ttl_still_writes_to_redis(redis_url: str) -> None:
    # Entry-level writes (a composition passing an absolute expiry) never overflow PX.
    from tieredcache import Entry

    with RedisBackend.from_url(redis_url, prefix="far:") as backend:
        backend.set_entry("k", Entry("v", 1e300, 1))
        assert backend.get("k") == "v"
