"""django-redis's sorted-set commands, and ``has_key`` on Redis keys that are not entries
(locks, hashes, sets, sorted sets), on the Django backend over a real Redis."""

from __future__ import annotations

import importlib
import pathlib
import typing as t

import django
import pytest
import redis
from django.conf import settings
from django.core.cache import caches
from django.test import override_settings

from tieredcache.config import release_shared_caches
from tieredcache.errors import UnsupportedOperationError

PACKAGE = __name__.rpartition(".")[0]
PROJECT = f"{PACKAGE}.django_project" if PACKAGE else "django_project"
BACKEND = "tieredcache.contrib.django.TieredCache"


@pytest.fixture(scope="module", autouse=True)
def django_configured() -> t.Iterator[None]:
    if not settings.configured:
        project = importlib.import_module(f"{PROJECT}.settings")
        settings.configure(**{n: getattr(project, n) for n in dir(project) if n.isupper()})
    django.setup()
    yield
    release_shared_caches()


@pytest.fixture(autouse=True)
def fresh_shared_caches() -> t.Iterator[None]:
    release_shared_caches()
    yield
    release_shared_caches()


def configured(location: str, **options: t.Any) -> t.Any:
    return override_settings(
        CACHES={"default": {"BACKEND": BACKEND, "LOCATION": location, "OPTIONS": options}}
    )


@pytest.fixture
def cache(redis_url: str) -> t.Iterator[t.Any]:
    with configured(redis_url):
        cache = caches["default"]
        cache.clear()
        yield cache


@pytest.fixture
def raw(redis_url: str) -> t.Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def exists_calls(raw: redis.Redis) -> int:
    stats = raw.info("commandstats").get("cmdstat_exists")
    return int(stats["calls"]) if stats else 0


# == has_key ===================================================================================


def test_has_key_sees_a_held_lock(cache: t.Any) -> None:
    assert not cache.has_key("job")
    with cache.lock("job", timeout=5):
        assert cache.has_key("job")
        assert cache.get("job") is None  # a lock is not an entry
    assert not cache.has_key("job")
    lock = cache.lock("job", timeout=5, blocking=False, version=2)
    assert lock.acquire()
    assert cache.has_key("job", version=2) and not cache.has_key("job")
    lock.release()


def test_has_key_sees_hashes_sets_and_sorted_sets(cache: t.Any) -> None:
    cache.hset("h", "f", 1)
    cache.sadd("s", 1)
    cache.zadd("z", {"m": 1.0})
    assert all(cache.has_key(key) for key in ("h", "s", "z"))
    cache.hdel("h", "f")
    cache.srem("s", 1)
    cache.zrem("z", "m")
    assert not any(cache.has_key(key) for key in ("h", "s", "z"))


def test_has_key_asks_redis_exists_only_after_an_entry_miss(cache: t.Any, raw: redis.Redis) -> None:
    cache.set("k", "v")
    before = exists_calls(raw)
    assert cache.has_key("k")  # an L1 hit
    cache.tiered.l1.delete(cache.make_key("k"))
    assert cache.has_key("k")  # an L2 hit
    assert exists_calls(raw) == before
    assert not cache.has_key("missing")
    assert exists_calls(raw) == before + 1


@pytest.mark.parametrize("kind", ["sqlite", "memcached"])
def test_has_key_without_redis_is_the_entry_read(
    kind: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    if kind == "sqlite":
        location = f"sqlite:///{tmp_path / 'cache.sqlite3'}"
    else:
        host, port = request.getfixturevalue("memcached_servers")[0]
        location = f"{host}:{port}"
    with configured(location):
        cache = caches["default"]
        cache.set("k", 1)
        assert cache.has_key("k") and not cache.has_key("missing")


# == sorted sets ===============================================================================


def test_zadd_and_its_flags(cache: t.Any) -> None:
    assert cache.zadd("z", {"a": 1.0, "b": 2.0}) == 2
    assert cache.zadd("z", {"a": 5.0}, nx=True) == 0 and cache.zscore("z", "a") == 1.0
    assert cache.zadd("z", {"c": 3.0}, xx=True) == 0 and cache.zscore("z", "c") is None
    assert cache.zadd("z", {"a": 4.0, "d": 0.5}, ch=True) == 2
    assert cache.zadd("z", {"a": 1.5}, incr=True) == 5.5
    assert cache.zadd("z", {"a": 2.0}, gt=True) == 0 and cache.zscore("z", "a") == 5.5
    assert cache.zadd("z", {"a": 2.0}, lt=True) == 0 and cache.zscore("z", "a") == 2.0
    assert cache.zcard("z") == 3


def test_ranges_ranks_and_scores(cache: t.Any, raw: redis.Redis) -> None:
    cache.zadd("z", {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0})
    assert cache.zrange("z", 0, -1) == ["a", "b", "c", "d"]
    assert cache.zrange("z", 0, 1, desc=True) == ["d", "c"]
    assert cache.zrange("z", 0, 0, withscores=True) == [("a", 1.0)]
    assert cache.zrange("z", 0, 0, withscores=True, score_cast_func=int) == [("a", 1)]
    assert cache.zrevrange("z", 0, 1, withscores=True) == [("d", 4.0), ("c", 3.0)]
    assert cache.zrangebyscore("z", 2, "+inf") == ["b", "c", "d"]
    assert cache.zrangebyscore("z", "(1", 4, start=1, num=2) == ["c", "d"]
    assert cache.zrangebyscore("z", 3, 3, withscores=True) == [("c", 3.0)]
    assert cache.zrevrangebyscore("z", 4, 2) == ["d", "c", "b"]
    assert cache.zrevrangebyscore("z", "+inf", "-inf", start=0, num=1, withscores=True) == [
        ("d", 4.0)
    ]
    assert cache.zcount("z", 2, 3) == 2 and cache.zcount("z", "(2", "+inf") == 2
    assert cache.zrank("z", "c") == 2 and cache.zrank("z", "zz") is None
    server = tuple(int(n) for n in str(raw.info("server")["redis_version"]).split(".")[:2])
    if server >= (7, 2):  # ZRANK ... WITHSCORE is Redis 7.2's
        assert cache.zrank("z", "c", withscore=True) == [2, 3.0]
    assert cache.zscore("z", "b") == 2.0 and cache.zscore("z", "zz") is None
    assert cache.zincrby("z", 10, "a") == 11.0 and cache.zincrby("z", 1, "new") == 1.0
    assert cache.zrange("z", -1, -1) == ["a"]


def test_pops_and_removals(cache: t.Any) -> None:
    assert cache.zpopmin("empty") is None and cache.zpopmax("empty", 2) == []
    cache.zadd("z", {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0})
    assert cache.zpopmax("z") == ("e", 5.0)
    assert cache.zpopmin("z", 2) == [("a", 1.0), ("b", 2.0)]
    assert cache.zrem("z", "c", "nope") == 1
    cache.zadd("z", {"x": 10.0, "y": 20.0})
    assert cache.zremrangebyscore("z", 5, 15) == 1
    assert cache.zrange("z", 0, -1, withscores=True) == [("d", 4.0), ("y", 20.0)]


def test_members_are_any_value_under_the_cache_serializer(redis_url: str) -> None:
    with configured(redis_url, SERIALIZER="json", COMPRESSOR="zlib"):
        cache = caches["default"]
        cache.zadd("z", {"text": 1, 7: 2, "x" * 4000: 3})
        assert cache.zrange("z", 0, -1) == ["text", 7, "x" * 4000]
        assert cache.zscore("z", 7) == 2.0
    with configured(redis_url):
        cache = caches["default"]
        member = (1, frozenset({"a"}))
        cache.zadd("p", {member: 1.0})
        assert cache.zpopmin("p") == (member, 1.0)


def test_sorted_sets_live_in_redis_only(cache: t.Any, raw: redis.Redis) -> None:
    cache.zadd("z", {"a": 1.0}, version=3)
    assert cache.zcard("z") == 0 and cache.zcard("z", version=3) == 1
    made = cache.make_key("z", version=3)
    assert raw.type(cache.tiered.l2.prefix.encode() + made.encode()) == b"zset"
    assert cache.tiered.l1.get_entry(made) is None and cache.get("z", version=3) is None
    assert cache.keys("z", version=3) == ["z"]
    cache.clear()
    assert cache.zcard("z", version=3) == 0


def test_sorted_sets_need_a_redis_l2(tmp_path: pathlib.Path) -> None:
    with configured(f"sqlite:///{tmp_path / 'cache.sqlite3'}"):
        cache = caches["default"]
        with pytest.raises(UnsupportedOperationError, match="sorted sets"):
            cache.zadd("z", {"a": 1.0})
        with pytest.raises(UnsupportedOperationError):
            cache.zrange("z", 0, -1)
