"""django-redis users change only BACKEND: settings, API and tiering on our backend."""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import time
import typing as t

import django
import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tieredcache.compressors import CompressingSerializer
from tieredcache.config import release_shared_caches
from tieredcache.errors import BackendError
from tieredcache.errors import UnsupportedOperationError

PACKAGE = __name__.rpartition(".")[0]
PROJECT = f"{PACKAGE}.django_project" if PACKAGE else "django_project"
BACKEND = "tieredcache.contrib.django.TieredCache"
DEFAULT_CLIENT = "django_redis.client.DefaultClient"


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


def entry(location: t.Any, **params: t.Any) -> dict[str, t.Any]:
    return {"BACKEND": BACKEND, "LOCATION": location, **params}


@pytest.fixture
def cache(redis_url: str) -> t.Iterator[t.Any]:
    options = {"CLIENT_CLASS": DEFAULT_CLIENT}
    with override_settings(CACHES={"default": entry(redis_url, OPTIONS=options)}):
        yield caches["default"]


pytestmark = pytest.mark.redis


# == settings ===================================================================================


def test_settings_are_read_as_django_s_base_cache_reads_them(tmp_path: t.Any) -> None:
    params = {"TIMEOUT": "1", "OPTIONS": {"MAX_ENTRIES": "30", "CULL_FREQUENCY": "2"}}
    with override_settings(CACHES={"default": entry("memory://", **params)}):
        cache = caches["default"]
        assert cache.default_timeout == 1
        assert cache.tiered.l2.maxsize == 30
    for timeout, expected in (("soon", 300), (2.9, 2), (None, None)):
        with override_settings(CACHES={"default": entry("memory://", TIMEOUT=timeout)}):
            assert caches["default"].default_timeout == expected
    with override_settings(CACHES={"default": entry("memory://", OPTIONS={"MAX_ENTRIES": "x"})}):
        assert caches["default"].tiered.l2.maxsize == 300  # Django's own fallback


def test_replica_list_and_comma_string_use_the_primary(redis_url: str) -> None:
    replica = redis_url.replace("127.0.0.1", "localhost")
    for location in ([redis_url, replica], f"{redis_url},{replica}"):
        with override_settings(CACHES={"default": entry(location)}):
            cache = caches["default"]
            cache.set("k", 1)
            assert cache.get("k") == 1
        release_shared_caches()


def test_django_redis_options_configure_the_l2(redis_url: str) -> None:
    options = {
        "CLIENT_CLASS": DEFAULT_CLIENT,
        "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
        "COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor",
        "SOCKET_CONNECT_TIMEOUT": 2,
        "SOCKET_TIMEOUT": 2,
        "CONNECTION_POOL_KWARGS": {"max_connections": 5},
    }
    with override_settings(CACHES={"default": entry(redis_url, OPTIONS=options)}):
        cache = caches["default"]
        cache.set("k", {"a": "b" * 5000})
        cache.tiered.l1.clear()
        assert cache.get("k") == {"a": "b" * 5000}
        assert isinstance(cache.tiered.l2.serializer.inner, CompressingSerializer)
        kwargs = cache.tiered.l2.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 2 and kwargs["socket_connect_timeout"] == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"CLIENT_CLASS": "django_redis.client.HerdClient"}, "CLIENT_CLASS"),
        ({"SERIALIZER": "django_redis.serializers.msgpack.MSGPackSerializer"}, "no tieredcache"),
        ({"PARSER_CLASS": "redis.connection.HiredisParser"}, "unknown cache option"),
    ],
)
def test_unsupported_django_redis_options_are_clear_errors(
    redis_url: str, options: dict[str, t.Any], message: str
) -> None:
    with (
        override_settings(
            CACHES={"default": entry("memory://"), "bad": entry(redis_url, OPTIONS=options)}
        ),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        caches["bad"]


def test_ignore_exceptions_answers_defaults_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    unreachable = "redis://127.0.0.1:1/0"
    options = {
        "IGNORE_EXCEPTIONS": True,
        "LOG_IGNORED_EXCEPTIONS": True,
        "SOCKET_CONNECT_TIMEOUT": 0.5,
    }
    with override_settings(
        CACHES={"default": entry(unreachable, OPTIONS=options)}, DJANGO_REDIS_LOGGER="app.cache"
    ):
        cache = caches["default"]
        with caplog.at_level(logging.ERROR, logger="app.cache"):
            assert cache.get("k") is None
            assert cache.get("k", "fallback") == "fallback"
            assert cache.get_many(["a"]) == {}
            assert cache.set("k", "v") is None
            # As django-redis: the default is the answer, its callable called once.
            calls: list[int] = []
            assert cache.get_or_set("g1", 3) == 3
            assert cache.get_or_set("g2", lambda: calls.append(1) or 4) == 4 and calls == [1]
        assert any("get failed" in r.getMessage() for r in caplog.records)
        assert any("get_or_set failed" in r.getMessage() for r in caplog.records)
    release_shared_caches()
    with override_settings(
        CACHES={"default": entry(unreachable, OPTIONS={"SOCKET_CONNECT_TIMEOUT": 0.5})},
        DJANGO_REDIS_IGNORE_EXCEPTIONS=True,
    ):
        assert caches["default"].get("k", 1) == 1
    release_shared_caches()
    with (
        override_settings(
            CACHES={"default": entry(unreachable, OPTIONS={"SOCKET_CONNECT_TIMEOUT": 0.5})}
        ),
        pytest.raises(BackendError),
    ):
        caches["default"].get("k")


# == API =========================================================================================


def test_set_nx_and_xx(cache: t.Any) -> None:
    assert cache.set("k", 1, nx=True) is True
    assert cache.set("k", 2, nx=True) is False
    assert cache.get("k") == 1
    assert cache.set("missing", 1, xx=True) is False
    assert cache.get("missing") is None
    assert cache.set("k", 3, xx=True) is True
    assert cache.get("k") == 3


def test_incr_ignore_key_check(cache: t.Any) -> None:
    with pytest.raises(ValueError):
        cache.incr("counter")
    assert cache.incr("counter", 5, ignore_key_check=True) == 5
    assert cache.incr("counter", ignore_key_check=True) == 6
    assert cache.ttl("counter") is None


def test_ttl_expire_and_persist_cap_the_l1_copy(cache: t.Any) -> None:
    assert cache.ttl("missing") == 0 and cache.pttl("missing") == 0
    cache.set("k", "v", timeout=100)
    assert cache.get("k") == "v"  # L1 holds a copy now
    assert 99 <= cache.ttl("k") <= 100
    assert 98_000 < cache.pttl("k") <= 100_000
    made = cache.make_key("k")

    def l1_expiry() -> float | None:
        held = cache.tiered.l1.get_entry(made)
        assert held is not None
        return held.expires_at

    assert cache.expire("k", 10) is True
    assert 9 <= cache.ttl("k") <= 10 and l1_expiry() <= time.time() + 10
    assert cache.pexpire("k", 5000) is True
    assert cache.ttl("k") == 5 and l1_expiry() <= time.time() + 5
    assert cache.persist("k") is True
    assert cache.ttl("k") is None
    when = dt.datetime.now() + dt.timedelta(seconds=20)
    assert cache.expire_at("k", when) is True
    assert 19 <= cache.ttl("k") <= 20 and l1_expiry() <= time.time() + 20
    assert cache.pexpire_at("k", int((time.time() + 30) * 1000)) is True
    assert 29 <= cache.ttl("k") <= 30
    assert cache.expire("k", 0) is True
    assert cache.get("k") is None and cache.tiered.l1.get_entry(made) is None
    assert cache.expire("missing", 10) is False and cache.persist("missing") is False


def test_delete_pattern_iter_keys_and_keys(cache: t.Any, redis_url: str) -> None:
    cache.set_many({"user:1": 1, "user:2": 2, "post:1": 3})
    cache.set("user:1", 1, version=2)
    assert sorted(cache.keys("user:*")) == ["user:1", "user:2"]
    assert sorted(cache.iter_keys("*")) == ["post:1", "user:1", "user:2"]
    assert cache.get("user:1") == 1  # in L1
    assert cache.delete_pattern("user:*") == 2
    assert cache.get("user:1") is None and cache.get("user:2") is None
    assert cache.get("post:1") == 3 and cache.get("user:1", version=2) == 1
    assert cache.delete_pattern("*", version=2) == 1
    with override_settings(CACHES={"default": entry(redis_url, KEY_PREFIX="p*x")}):
        other = caches["default"]
        other.set("a", 1)
        assert other.keys("*") == ["a"]  # the prefix is matched literally
        assert other.delete_pattern("a", itersize=10) == 1


def test_pattern_commands_on_memcached_are_typed_errors(
    memcached_servers: list[tuple[str, int]],
) -> None:
    host, port = memcached_servers[0]
    with override_settings(CACHES={"default": entry(f"{host}:{port}")}):
        cache = caches["default"]
        with pytest.raises(UnsupportedOperationError, match="tags"):
            cache.delete_pattern("*")
        with pytest.raises(UnsupportedOperationError):
            cache.hset("h", "f", 1)


def test_lock(cache: t.Any) -> None:
    lock = cache.lock("resource", timeout=5, blocking_timeout=0.1)
    assert lock.acquire() is True
    assert cache.lock("resource", blocking_timeout=0.05).acquire() is False
    lock.release()
    with cache.lock("resource", timeout=5, sleep=0.01, thread_local=False):
        pass


def test_ttl_expire_and_persist_of_structures_and_locks(cache: t.Any) -> None:
    # As in django-redis: a set, a sorted set, a hash or a lock has its own TTL in Redis.
    cache.sadd("online", 1)
    cache.zadd("board", {"a": 1})
    cache.hset("h", "f", 1)
    lock = cache.lock("job", timeout=30)
    assert lock.acquire()
    try:
        assert cache.ttl("online") is None and cache.ttl("board") is None
        assert cache.expire("online", 60) is True and 50 < cache.ttl("online") <= 60
        assert cache.pexpire("board", 5000) is True and 0 < cache.pttl("board") <= 5000
        assert 20 < cache.ttl("job") <= 30
        assert cache.expire("job", 60) is True and 50_000 < cache.pttl("job") <= 60_000
        assert cache.persist("online") is True and cache.ttl("online") is None
        assert cache.persist("h") is True  # it holds a value, which has no expiry
        assert cache.expire("h", 0) is True and cache.hlen("h") == 0  # 0 deletes it
        assert cache.expire("nothing", 60) is False and cache.ttl("nothing") == 0
    finally:
        lock.release()


def test_hash_commands_stay_in_l2(cache: t.Any) -> None:
    assert cache.hset("h", "a", 1) == 1
    assert cache.hset("h", mapping={"b": [2], "c": "3"}) == 2
    assert cache.hlen("h") == 3
    assert sorted(cache.hkeys("h")) == ["a", "b", "c"]
    assert cache.hexists("h", "b") and not cache.hexists("h", "z")
    assert cache.hdel("h", "a") == 1
    assert cache.tiered.l1.get_entry(cache.make_key("h")) is None
    assert cache.keys("h") == ["h"]
    assert cache.delete_pattern("h") == 1 and cache.hlen("h") == 0


def test_set_commands(cache: t.Any) -> None:
    assert cache.sadd("s", 1, 2, 3) == 3
    assert cache.sadd("t", 3, 4) == 2
    assert cache.scard("s") == 3
    assert cache.smembers("s") == {1, 2, 3}
    assert cache.sismember("s", 2) and not cache.sismember("s", 9)
    assert cache.smismember("s", 1, 9) == [True, False]
    assert cache.sdiff("s", "t") == {1, 2}
    assert cache.sinter("s", "t") == {3}
    assert cache.sunion("s", "t") == {1, 2, 3, 4}
    assert cache.sdiffstore("d", "s", "t") == 2 and cache.smembers("d") == {1, 2}
    assert cache.sinterstore("i", "s", "t") == 1
    assert cache.sunionstore("u", "s", "t") == 4
    assert cache.smove("s", "t", 1) and cache.smembers("t") == {1, 3, 4}
    assert cache.srem("t", 1, 9) == 1
    assert cache.srandmember("s") in {2, 3}
    assert sorted(cache.srandmember("s", 2)) == [2, 3]
    assert set(cache.sscan_iter("u")) == {1, 2, 3, 4}
    assert cache.sscan("u", match="[12]") == {1, 2}
    popped = cache.spop("u")
    assert popped in {1, 2, 3, 4} and cache.scard("u") == 3
    assert len(cache.spop("u", 2)) == 2


def test_delete_many_counts(cache: t.Any) -> None:
    cache.set_many({"a": 1, "b": 2})
    assert cache.delete_many(["a", "b", "c"]) == 2
    assert not cache.delete_many(key for key in ())


def test_client_gives_the_raw_redis_client_and_keys(cache: t.Any) -> None:
    cache.set("k", 1)
    raw = cache.client.get_client(write=True)
    assert raw.exists(cache.client.make_key("k")) == 1
    assert cache.client.make_key("k", version=3) == ":3:k"


def test_clear_removes_the_alias_structures_only(cache: t.Any, raw_redis: t.Any) -> None:
    raw_redis.set(b"foreign", b"kept")
    cache.sadd("s", 1)
    cache.hset("h", "f", 1)
    cache.set("k", 1)
    cache.clear()
    assert cache.scard("s") == 0 and cache.hlen("h") == 0 and cache.get("k") is None
    assert raw_redis.get(b"foreign") == b"kept"


@pytest.fixture
def raw_redis(redis_url: str) -> t.Iterator[t.Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
