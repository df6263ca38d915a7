"""The Django cache backend, on real Redis and memcached servers, a SQLite file and memory.

Django is configured once for this module from ``django_project/settings.py``; each test
sets the ``CACHES`` it needs with ``override_settings``, because the servers' addresses are
only known once the session has started them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import io
import os
import pickle
import threading
import time
import typing as t
import warnings

import django
import pytest
import redis
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import CacheKeyWarning
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.signals import request_finished
from django.test import Client
from django.test import RequestFactory
from django.test import override_settings

from tieredcache import config
from tieredcache.config import SIGNING_SALT
from tieredcache.config import release_shared_caches
from tieredcache.entry import Entry
from tieredcache.errors import BackendError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import SerializationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.serializers import EntryCodec
from tieredcache.testing.clock import wait_until

PACKAGE = __name__.rpartition(".")[0]
PROJECT = f"{PACKAGE}.django_project" if PACKAGE else "django_project"
BACKEND = "tieredcache.contrib.django.TieredCache"
HEADER = EntryCodec.header_size
MAC = 32

KINDS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("memcached", marks=pytest.mark.memcached),
    "sqlite",
    "memory",
]

PATIENCE = 10.0


def configure_django() -> None:
    """Configure Django from the test project's settings, once per process."""
    if not settings.configured:
        project = importlib.import_module(f"{PROJECT}.settings")
        settings.configure(**{n: getattr(project, n) for n in dir(project) if n.isupper()})
    django.setup()


@pytest.fixture(scope="module", autouse=True)
def django_configured() -> t.Iterator[None]:
    configure_django()
    yield
    release_shared_caches()


@pytest.fixture(autouse=True)
def fresh_shared_caches() -> t.Iterator[None]:
    """Each test starts with no shared cache (no L1 left over from another test)."""
    release_shared_caches()
    yield
    release_shared_caches()


def entry(location: t.Any, **params: t.Any) -> dict[str, t.Any]:
    return {"BACKEND": BACKEND, "LOCATION": location, **params}


@pytest.fixture
def locate(request: pytest.FixtureRequest, tmp_path: t.Any) -> t.Callable[[str], str]:
    """``locate(kind)``: a LOCATION for a kind of L2, on this test's servers and files."""

    def location(kind: str) -> str:
        if kind == "redis":
            return t.cast(str, request.getfixturevalue("redis_url"))
        if kind == "memcached":
            host, port = request.getfixturevalue("memcached_servers")[0]
            return f"memcached://{host}:{port}"
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'cache.sqlite3'}"
        return "memory://"

    return location


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


@pytest.fixture
def location(kind: str, locate: t.Callable[[str], str]) -> str:
    return locate(kind)


@pytest.fixture
def cache(location: str) -> t.Iterator[t.Any]:
    with override_settings(CACHES={"default": entry(location)}):
        yield caches["default"]


@pytest.fixture
def redis_location(redis_url: str) -> str:
    return redis_url


@pytest.fixture
def raw_redis(redis_url: str) -> t.Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def remaining(cache: t.Any, key: str) -> float | None:
    """Seconds ``key`` has left, from the entry the tiered cache holds (None = forever)."""
    found = cache.tiered.get_entry(cache.make_key(key))
    assert found is not None, f"{key!r} is not cached"
    return None if found.expires_at is None else found.expires_at - time.time()


# == the cache API, on every kind of L2 ======================================================


def test_get_and_set(cache: t.Any) -> None:
    assert cache.get("missing") is None
    assert cache.get("missing", "fallback") == "fallback"
    assert cache.set("k", {"a": [1, 2]}) is True
    assert cache.get("k") == {"a": [1, 2]}
    for value in (None, 0, False, "", b"", [], "ünïcode"):
        cache.set("falsy", value)
        assert cache.get("falsy", "fallback") == value
        assert cache.has_key("falsy")
    cache.set("k", "replaced")
    assert cache.get("k") == "replaced"


def test_add(cache: t.Any) -> None:
    assert cache.add("k", "first") is True
    assert cache.add("k", "second") is False
    assert cache.get("k") == "first"
    cache.delete("k")
    assert cache.add("k", "third") is True
    assert cache.get("k") == "third"


def test_delete_returns_whether_the_key_held_a_value(cache: t.Any) -> None:
    cache.set("k", 1)
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.get("k") is None


def test_has_key_and_in(cache: t.Any) -> None:
    assert not cache.has_key("k")
    assert "k" not in cache
    cache.set("k", None)
    assert cache.has_key("k")
    assert "k" in cache


def test_touch(cache: t.Any) -> None:
    assert cache.touch("missing", 10) is False
    cache.set("k", "v", 10)
    assert cache.touch("k", 1000) is True
    left = remaining(cache, "k")
    assert left is not None and 990 < left <= 1000
    assert cache.touch("k", None) is True
    assert remaining(cache, "k") is None
    assert cache.get("k") == "v"
    assert cache.touch("k", 0) is True  # expires at once
    assert cache.get("k") is None


def test_incr_and_decr(cache: t.Any) -> None:
    cache.set("n", 10)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n") == 15
    assert cache.decr("n", 20) == -5
    assert cache.incr("n", -1) == -6
    assert cache.get("n") == -6


def test_incr_keeps_the_timeout(cache: t.Any) -> None:
    cache.set("n", 1, 500)
    cache.incr("n")
    left = remaining(cache, "n")
    assert left is not None and 490 < left <= 500


def test_incr_of_a_missing_key_raises_value_error(cache: t.Any) -> None:
    with pytest.raises(ValueError, match="not found"):
        cache.incr("missing")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("missing")
    assert cache.get("missing") is None


def test_incr_of_a_non_integer_raises_type_error(cache: t.Any) -> None:
    cache.set("text", "ten")
    with pytest.raises(TypeError):
        cache.incr("text")
    with pytest.raises(TypeError):
        cache.decr("text")
    assert cache.get("text") == "ten"


def test_get_or_set(cache: t.Any) -> None:
    calls = []

    def compute() -> str:
        calls.append(1)
        return "computed"

    assert cache.get_or_set("k", compute) == "computed"
    assert cache.get_or_set("k", compute) == "computed"
    assert len(calls) == 1
    assert cache.get_or_set("plain", "default") == "default"
    assert cache.get("plain") == "default"
    assert cache.get_or_set("zero", "value", timeout=0) == "value"
    assert not cache.has_key("zero")


def test_many(cache: t.Any) -> None:
    assert cache.set_many({"a": 1, "b": [2], 3: "three"}) == []
    assert cache.get_many(["a", "b", 3, "missing"]) == {"a": 1, "b": [2], 3: "three"}
    assert cache.get_many([]) == {}
    assert cache.delete_many(["a", 3, "missing"]) == 2  # django-redis: the count
    assert cache.delete_many([]) is None  # Django: nothing to delete answers None
    assert cache.get_many(["a", "b", 3]) == {"b": [2]}
    assert cache.set_many({"a": 1, "b": 2}, timeout=0) == []
    assert cache.get_many(["a", "b"]) == {}


def test_many_honours_the_timeout(cache: t.Any) -> None:
    cache.set_many({"a": 1, "b": 2}, timeout=700)
    for key in ("a", "b"):
        left = remaining(cache, key)
        assert left is not None and 690 < left <= 700
    cache.set_many({"c": 3}, timeout=None)
    assert remaining(cache, "c") is None


def test_clear(cache: t.Any) -> None:
    cache.set_many({"a": 1, "b": 2})
    cache.clear()
    assert cache.get_many(["a", "b"]) == {}


def test_close_keeps_the_shared_state(cache: t.Any) -> None:
    cache.set("k", "v")
    tiered = cache.tiered
    cache.close()
    request_finished.send(sender=None)  # Django closes every cache at the end of a request
    assert caches["default"].tiered is tiered
    assert cache.get("k") == "v"
    cache.set("k2", "v2")
    assert cache.get("k2") == "v2"


def test_incr_and_decr_version(cache: t.Any) -> None:
    cache.set("k", "v")
    assert cache.incr_version("k") == 2
    assert cache.get("k") is None
    assert cache.get("k", version=2) == "v"
    assert cache.decr_version("k", version=2) == 1
    assert cache.get("k") == "v"
    assert cache.get("k", version=2) is None
    with pytest.raises(ValueError):
        cache.incr_version("missing")


def test_a_new_version_keeps_the_expiry(cache: t.Any) -> None:
    # As django-redis: the value keeps its remaining time (Django's generic incr_version
    # would give it the default timeout).
    cache.set("forever", "v", None)
    cache.set("soon", "v", 1000)
    for key in ("forever", "soon"):
        assert cache.incr_version(key) == 2
    found = cache.tiered.get_entry(cache.make_key("forever", version=2))
    assert found is not None and found.expires_at is None
    found = cache.tiered.get_entry(cache.make_key("soon", version=2))
    assert found is not None and 990 < found.expires_at - time.time() <= 1000
    assert cache.decr_version("soon", version=2) == 1
    assert cache.get("soon") == "v" and 990 < remaining(cache, "soon") <= 1000  # type: ignore[operator]


def test_values_are_never_aliased(cache: t.Any) -> None:
    value = [1, 2, {"x": 1}]
    cache.set("k", value)
    value.append("changed after set")
    got = cache.get("k")
    assert got == [1, 2, {"x": 1}]
    got.append("changed after get")
    got[2]["x"] = 99
    assert cache.get("k") == [1, 2, {"x": 1}]
    many = cache.get_many(["k"])
    many["k"].clear()
    assert cache.get("k") == [1, 2, {"x": 1}]


@pytest.mark.parametrize("call", ["set", "add", "set_many", "get_or_set"])
def test_unpicklable_values_raise_pickle_error_and_write_nothing(cache: t.Any, call: str) -> None:
    cache.set("k", "old")
    unpicklable = threading.Lock()
    with pytest.raises(pickle.PickleError) as info:
        if call == "set":
            cache.set("k", unpicklable)
        elif call == "add":
            cache.add("new", unpicklable)
        elif call == "set_many":
            cache.set_many({"new": "fine", "k": unpicklable})
        else:
            cache.get_or_set("new", lambda: unpicklable)
    assert isinstance(info.value.__cause__, SerializationError)
    assert cache.get("k") == "old"
    assert not cache.has_key("new")


# == timeouts ==================================================================================


def test_timeouts(cache: t.Any) -> None:
    cache.set("default", 1)  # TIMEOUT is Django's default, 300
    left = remaining(cache, "default")
    assert left is not None and 290 < left <= 300
    cache.set("forever", 1, None)
    assert remaining(cache, "forever") is None
    cache.set("float", 1, 2.5)
    left = remaining(cache, "float")
    assert left is not None and 2.0 < left <= 2.5
    # Beyond 100 years, as Django's other backends keep it: in effect, forever.
    for timeout in (10**10, 10**400, float("inf")):
        cache.set("far", timeout, timeout)
        assert cache.get("far") == timeout and remaining(cache, "far") is None
        assert cache.get_or_set("far-too", 1, timeout) == 1
    for timeout in (0, -1, -0.5):
        cache.set("gone", "old")
        cache.set("gone", "new", timeout)
        assert cache.get("gone") is None, timeout
        assert not cache.has_key("gone")
        assert cache.add("gone", "x", timeout) is True  # the key was free, nothing is stored
        assert cache.get("gone") is None
    cache.set("kept", "v")
    assert cache.add("kept", "x", 0) is False
    assert cache.get("kept") == "v"


def test_a_short_timeout_expires(cache: t.Any) -> None:
    cache.set("brief", "v", 1.0)  # a second: the read below comes well before it ends
    assert cache.get("brief") == "v"
    time.sleep(1.1)
    assert cache.get("brief") is None
    assert not cache.has_key("brief")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, None), (60, 60), (1.5, 1.5)],
    ids=["none", "int", "float"],
)
def test_the_timeout_setting(location: str, setting: t.Any, expected: float | None) -> None:
    with override_settings(CACHES={"default": entry(location, TIMEOUT=setting)}):
        cache = caches["default"]
        cache.set("k", "v")
        left = remaining(cache, "k")
        if expected is None:
            assert left is None
        else:
            assert left is not None and expected - 1 < left <= expected


def test_timeout_setting_zero_stores_nothing(location: str) -> None:
    with override_settings(CACHES={"default": entry(location, TIMEOUT=0)}):
        cache = caches["default"]
        cache.set("k", "v")
        assert cache.get("k") is None
        cache.set("k", "v", 10)
        assert cache.get("k") == "v"


# == keys ======================================================================================


@pytest.mark.parametrize(
    "key", ["with space", "x" * 251, "tab\there", "del\x7f"], ids=["space", "long", "tab", "del"]
)
def test_keys_memcached_cannot_take_warn_and_are_still_stored(cache: t.Any, key: str) -> None:
    with pytest.warns(CacheKeyWarning):
        cache.set(key, "v")
    with pytest.warns(CacheKeyWarning):
        assert cache.get(key) == "v"
    with pytest.warns(CacheKeyWarning):
        assert cache.get_many([key]) == {key: "v"}
    with pytest.warns(CacheKeyWarning):
        assert cache.delete(key) is True


@pytest.mark.parametrize("key", ["k", 7, "é", "x" * 200, "a:b"])
@pytest.mark.parametrize("version", [None, 3])
def test_made_keys_are_djangos_and_clean_ones_never_warn(
    cache: t.Any, key: t.Any, version: int | None
) -> None:
    from django.core.cache.backends.base import BaseCache

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheKeyWarning)
        made = cache.make_and_validate_key(key, version=version)
        assert made == BaseCache.make_key(cache, key, version=version)
        cache.key_prefix, cache.version = "other", 9  # read on every call, never remembered
        assert cache.make_and_validate_key(key, version=version) == BaseCache.make_key(
            cache, key, version=version
        )
        cache.set(key, "v", version=version)
        assert cache.get(key, version=version) == "v"


def test_a_key_function_that_reads_request_state_is_honoured(
    redis_location: str, raw_redis: t.Any
) -> None:
    # Multi-tenant apps make keys from the current tenant: the same (key, version) must map
    # to another cache key when the tenant changes, so made keys are never reused.
    tenant = {"name": "alpha"}

    def key_function(key: str, key_prefix: str, version: int) -> str:
        return f"{tenant['name']}:{key_prefix}:{version}:{key}"

    with override_settings(CACHES={"default": entry(redis_location, KEY_FUNCTION=key_function)}):
        cache = caches["default"]
        cache.set("k", "for alpha")
        assert cache.get("k") == "for alpha"
        tenant["name"] = "beta"
        assert cache.get("k") is None
        cache.set("k", "for beta")
        tenant["name"] = "alpha"
        assert cache.get("k") == "for alpha"
        assert raw_redis.exists(b"alpha::1:k") and raw_redis.exists(b"beta::1:k")


def test_key_prefix_version_and_key_function(redis_location: str, raw_redis: t.Any) -> None:
    def key_function(key: str, key_prefix: str, version: int) -> str:
        return f"custom|{key_prefix}|v{version}|{key}"

    params = {"KEY_PREFIX": "app", "VERSION": 3, "KEY_FUNCTION": key_function}
    with override_settings(CACHES={"default": entry(redis_location, **params)}):
        cache = caches["default"]
        cache.set("one", 1)
        cache.set_many({"two": 2, "three": 3})
        cache.add("four", 4)
        cache.get_or_set("five", 5)
        assert sorted(raw_redis.keys()) == [
            b"custom|app|v3|five",
            b"custom|app|v3|four",
            b"custom|app|v3|one",
            b"custom|app|v3|three",
            b"custom|app|v3|two",
        ]
        assert cache.incr("one") == 2
        assert cache.get_many(["one", "two"]) == {"one": 2, "two": 2}
        assert cache.get("one", version=4) is None
        cache.set("one", "v4", version=4)
        assert raw_redis.exists(b"custom|app|v4|one")
        cache.delete_many(["two", "three"])
        assert not raw_redis.exists(b"custom|app|v3|two", b"custom|app|v3|three")


def test_default_key_layout(redis_location: str, raw_redis: t.Any) -> None:
    params = {"KEY_PREFIX": "site", "VERSION": 2, "OPTIONS": {"L2_PREFIX": "tc/"}}
    with override_settings(CACHES={"default": entry(redis_location, **params)}):
        caches["default"].set("k", "v")
    assert raw_redis.keys() == [b"tc/site:2:k"]


# == sharing ===================================================================================


def test_instances_in_two_threads_share_one_l1(redis_location: str) -> None:
    with override_settings(CACHES={"default": entry(redis_location)}):
        mine = caches["default"]
        # The backplane (on by default for Redis) empties L1 once when it subscribes.
        assert mine.tiered.backplane is not None and mine.tiered.backplane.wait_connected(10)
        mine.set("shared", {"n": 1})
        before = mine.tiered.stats()
        seen: dict[str, t.Any] = {}

        def other_thread() -> None:
            theirs = caches["default"]
            seen["instance"] = theirs
            seen["value"] = theirs.get("shared")

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert seen["instance"] is not mine  # Django made a second backend instance ...
        assert seen["instance"].tiered is mine.tiered  # ... on the same tiered cache
        assert seen["value"] == {"n": 1}
        after = mine.tiered.stats()
        assert after["l1_hits"] == before["l1_hits"] + 1
        assert after["l2_hits"] == before["l2_hits"]


def test_aliases_with_one_location_share_the_core_but_not_keys(redis_location: str) -> None:
    aliases = {
        "default": entry(redis_location),
        "a": entry(redis_location, KEY_PREFIX="a"),
        "b": entry(redis_location, KEY_PREFIX="b"),
        "other": entry(redis_location, OPTIONS={"MAX_ENTRIES": 50}),
    }
    with override_settings(CACHES=aliases):
        a, b = caches["a"], caches["b"]
        assert a.tiered is b.tiered is caches["default"].tiered
        assert caches["other"].tiered is not a.tiered  # other options: another cache
        a.set("k", "from a")
        assert b.get("k") is None
        b.set("k", "from b")
        assert a.get("k") == "from a"
        assert b.get("k") == "from b"
        assert caches["other"].get("k") is None  # no KEY_PREFIX


def test_options_configure_the_shared_cache(redis_location: str) -> None:
    options = {
        "MAX_ENTRIES": 123,
        "L1_MAX_BYTES": 1_000_000,
        "L1_TTL": 30,
        "L1_POLICY": "lfu",
        "READ": "parallel",
        "WRITE": "race",
        "REFILL": "never",
        "SERIALIZER": "json",
        "COMPRESS_THRESHOLD": 64,
        "OFFLOAD_WORKERS": 2,
        "SOCKET_TIMEOUT": 3,
        "CONNECT_TIMEOUT": 1,
        "L2_PREFIX": "x:",
    }
    with override_settings(CACHES={"default": entry(redis_location, OPTIONS=options)}):
        cache = caches["default"]
        tiered = cache.tiered
        assert tiered.l1.maxsize == 123
        assert tiered.l1.max_bytes == 1_000_000
        assert tiered.l1.policy == "lfu"
        assert tiered.l1_ttl == 30
        assert tiered.l2.prefix == "x:"
        assert "ParallelRead" in repr(tiered.read)
        assert "RaceWrite" in repr(tiered.write)
        assert tiered.refill.name == "NEVER"
        assert tiered.offload.max_workers == 2
        cache.set("k", {"text": "x" * 500})
        assert tiered.drain(5)
        release_shared_caches()
        assert caches["default"].get("k") == {"text": "x" * 500}  # from L2, as JSON


def test_embedded_default_location(monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with override_settings(CACHES={"default": {"BACKEND": BACKEND}}):
        cache = caches["default"]
        cache.set("k", "v")
        assert cache.tiered.l2.name == "sqlite"
        assert os.path.exists(tmp_path / "tieredcache" / "default.sqlite3")
        release_shared_caches()
        assert caches["default"].get("k") == "v"


# == signing ===================================================================================


def test_payloads_are_signed_by_default(redis_location: str, raw_redis: t.Any) -> None:
    with override_settings(CACHES={"default": entry(redis_location)}):
        caches["default"].set("k", ["value"])
    raw = raw_redis.get(b":1:k")
    mac, body = raw[HEADER : HEADER + MAC], raw[HEADER + MAC :]
    assert pickle.loads(body) == ["value"]
    derived = hmac.new(SIGNING_SALT, settings.SECRET_KEY.encode(), hashlib.sha256).digest()
    # The MAC covers the envelope header as well as the payload.
    signed = b"tieredcache.signed.v2\x00" + HEADER.to_bytes(4, "big") + raw[:HEADER] + body
    assert mac == hmac.new(derived, signed, hashlib.sha256).digest()
    # the raw SECRET_KEY is not the signing key
    assert mac != hmac.new(settings.SECRET_KEY.encode(), signed, hashlib.sha256).digest()


def test_a_forged_payload_is_a_miss(redis_location: str, raw_redis: t.Any) -> None:
    unsigned = EntryCodec().encode(Entry("forged"))
    badly_signed = EntryCodec.header(None, None, 1) + b"\0" * MAC + pickle.dumps("forged")
    raw_redis.set(b":1:unsigned", unsigned)
    raw_redis.set(b":1:badly_signed", badly_signed)
    with override_settings(CACHES={"default": entry(redis_location)}):
        cache = caches["default"]
        assert cache.get("unsigned") is None
        assert cache.get("badly_signed", "miss") == "miss"
        assert cache.get_many(["unsigned", "badly_signed"]) == {}
        assert cache.tiered.stats()["l2"]["corrupt"] >= 3


def test_secret_key_fallbacks_are_accepted_on_read(redis_location: str) -> None:
    caches_setting = {"default": entry(redis_location)}
    with override_settings(SECRET_KEY="the-old-secret-key", CACHES=caches_setting):
        caches["default"].set("k", "written under the old key")
    with override_settings(
        SECRET_KEY="the-new-secret-key",
        SECRET_KEY_FALLBACKS=["the-old-secret-key"],
        CACHES=caches_setting,
    ):
        assert caches["default"].get("k") == "written under the old key"
    with override_settings(SECRET_KEY="the-new-secret-key", CACHES=caches_setting):
        assert caches["default"].get("k") is None  # the old key is no longer accepted


def test_sign_false_stores_plain_pickles(redis_location: str, raw_redis: t.Any) -> None:
    with override_settings(CACHES={"default": entry(redis_location, OPTIONS={"SIGN": False})}):
        caches["default"].set("k", {"plain": True})
    assert pickle.loads(raw_redis.get(b":1:k")[HEADER:]) == {"plain": True}


# == configuration errors ======================================================================


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"LOCATION": "http://example.com"}, "redis://"),
        ({"LOCATION": "not a location"}, "host:port"),
        ({"LOCATION": "memory://", "OPTIONS": {"MAX_ENTRYS": 10}}, "MAX_ENTRIES"),
        ({"LOCATION": "memory://", "OPTIONS": {"L1_POLICY": "random"}}, "'lru'"),
        ({"LOCATION": "memory://", "OPTIONS": {"WRITE": "eventually"}}, "race-drop"),
        ({"LOCATION": "memory://", "OPTIONS": {"SERIALIZER": "no.such.Serializer"}}, "import"),
        ({"LOCATION": "memory://", "OPTIONS": {"SIGN": "yes"}}, "True or False"),
        ({"LOCATION": "memory://", "OPTIONS": "MAX_ENTRIES=10"}, "mapping"),
        ({"LOCATION": ["redis://a", "redis+cluster://b:1"]}, "primary and its replicas"),
        ({"LOCATION": ["redis://a", "127.0.0.1:11211"]}, "Redis URLs only"),
        ({"LOCATION": "memory://", "OPTIONS": {"CLIENT_CLASS": "x.ShardClient"}}, "CLIENT_CLASS"),
        ({"LOCATION": "memory://", "OPTIONS": {"COMPRESSOR": "brotli"}}, "compressor"),
        ({"LOCATION": "memory://", "OPTIONS": {"PASSWORD": "pw"}}, "not Redis"),
    ],
    ids=[
        "scheme",
        "garbage",
        "typo",
        "l1-policy",
        "write-policy",
        "serializer",
        "sign",
        "options-type",
        "cluster-in-list",
        "mixed-list",
        "client-class",
        "compressor",
        "password-not-redis",
    ],
)
def test_misconfiguration_raises_improperly_configured(
    params: dict[str, t.Any], message: str
) -> None:
    with (
        override_settings(
            CACHES={"default": entry("memory://"), "bad": {"BACKEND": BACKEND, **params}}
        ),
        pytest.raises(ImproperlyConfigured, match=message) as info,
    ):
        caches["bad"]
    assert isinstance(info.value.__cause__, ConfigurationError)


def test_signing_without_a_secret_key_is_refused() -> None:
    with (
        override_settings(
            SECRET_KEY="", CACHES={"default": entry("memory://", OPTIONS={"SIGN": True})}
        ),
        pytest.raises(ImproperlyConfigured, match="SECRET_KEY"),
    ):
        caches["default"]
    with override_settings(SECRET_KEY="", CACHES={"default": entry("memory://")}):
        caches["default"].set("k", "v")  # no secret key: unsigned, and no error
        assert caches["default"].get("k") == "v"


# == failures ==================================================================================


def test_backend_errors_propagate() -> None:
    unreachable = "redis://127.0.0.1:1/0"
    options = {"CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}
    with override_settings(CACHES={"default": entry(unreachable, OPTIONS=options)}):
        cache = caches["default"]
        with pytest.raises(BackendError):
            cache.get("k")
        with pytest.raises(BackendError):
            cache.set("k", "v")


@pytest.mark.memcached
def test_memcached_refuses_too_large_values_per_key(locate: t.Callable[[str], str]) -> None:
    with override_settings(CACHES={"default": entry(locate("memcached"))}):
        cache = caches["default"]
        big = os.urandom(2 * 1024 * 1024)
        cache.set("big", "old")
        with pytest.raises(ValueTooLargeError):
            cache.set("big", big)
        assert cache.get("big") is None  # neither the new value nor a stale copy in L1
        assert cache.set_many({"small": 1, "big": big, "also_small": 2}) == ["big"]
        assert cache.get_many(["small", "big", "also_small"]) == {"small": 1, "also_small": 2}


# == async =====================================================================================


def test_async_variants(cache: t.Any) -> None:
    async def scenario() -> None:
        await cache.aset("k", [1])
        assert await cache.aget("k") == [1]
        assert await cache.aadd("k", "other") is False
        assert await cache.aadd("n", 1) is True
        assert await cache.aincr("n", 4) == 5
        assert await cache.adecr("n") == 4
        with pytest.raises(ValueError):
            await cache.aincr("missing")
        assert await cache.aset_many({"a": 1, "b": 2}) == []
        assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert await cache.ahas_key("a") is True
        assert await cache.atouch("a", None) is True
        assert await cache.aget_or_set("g", lambda: "made") == "made"
        assert await cache.adelete("a") is True
        await cache.adelete_many(["b", "g"])
        assert await cache.aget_many(["a", "b", "g"]) == {}
        assert await cache.aincr_version("k") == 2
        assert await cache.aget("k", version=2) == [1]
        await cache.aclear()
        assert await cache.aget("n") is None
        await cache.aclose()

    asyncio.run(scenario())


# == across processes ===========================================================================


def test_with_redis_the_backplane_is_on_and_other_processes_see_a_change(
    redis_location: str,
) -> None:
    # The default OPTIONS of a Redis LOCATION: a change made through one process reaches the
    # L1 copy another process holds (here a second cache, with its own L1, on the same Redis).
    with override_settings(CACHES={"default": entry(redis_location)}):
        first = caches["default"]
        assert first.tiered.backplane is not None
        second = config.build_cache(
            redis_location, {"BACKPLANE": True}, secret_key=settings.SECRET_KEY
        )
        try:
            assert first.tiered.backplane.wait_connected(PATIENCE)
            assert second.backplane is not None and second.backplane.wait_connected(PATIENCE)
            made = first.make_key("k")
            first.set("k", "old")
            assert second.get(made) == "old"  # now in the second process's L1
            first.set("k", "new")
            assert wait_until(lambda: second.get(made) == "new", PATIENCE)
            second.delete(made)
            assert wait_until(lambda: first.get("k") is None, PATIENCE)
        finally:
            second.close()


def test_backplane_false_turns_the_default_off(redis_location: str) -> None:
    options = {"BACKPLANE": False}
    with override_settings(CACHES={"default": entry(redis_location, OPTIONS=options)}):
        assert caches["default"].tiered.backplane is None


def test_another_process_sees_a_change_once_its_l1_copy_expires(redis_location: str) -> None:
    # Two shared caches on one Redis stand for two processes: each has its own L1.
    options = {"L1_TTL": 1.0}
    with override_settings(CACHES={"default": entry(redis_location, OPTIONS=options)}):
        first = caches["default"]
        first.set("k", "old")
        second = config.build_cache(redis_location, options, secret_key=settings.SECRET_KEY)
        try:
            made = first.make_key("k")
            assert second.get(made) == "old"  # now in the second "process's" L1 too
            first.set("k", "new")
            assert second.get(made) == "old"  # a stale L1 copy, at most L1_TTL old
            time.sleep(1.1)
            assert second.get(made) == "new"
        finally:
            second.close()


# == the shared registry =========================================================================


def test_equal_configurations_share_one_cache() -> None:
    first = config.shared_cache("memcached://127.0.0.1:11311", {"MAX_ENTRIES": 10})
    assert config.shared_cache(["127.0.0.1:11311"], {"max_entries": 10}) is first
    assert config.shared_cache("127.0.0.1:11311", {"l1_maxsize": 10}) is first
    assert config.shared_cache("127.0.0.1:11311", {"l1_maxsize": 11}) is not first
    assert config.shared_cache("127.0.0.1:11311", {"l1_maxsize": 10}, secret_key="s") is not first
    assert config.build_cache("127.0.0.1:11311", {"l1_maxsize": 10}) is not first


def test_a_forked_child_builds_its_own_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = config.shared_cache("memory://")
    monkeypatch.setattr(config, "_registry_pid", -1)  # as seen from a child process
    child = config.shared_cache("memory://")
    assert child is not parent
    assert config.shared_cache("memory://") is child


def test_release_closes_the_caches_and_their_offloads() -> None:
    cache = config.shared_cache("memory://", {"OFFLOAD_WORKERS": 1, "WRITE": "race"})
    cache.set("k", "v")
    offload = cache.offload
    config.release_shared_caches()
    assert offload.closed
    assert config.shared_cache("memory://", {"OFFLOAD_WORKERS": 1, "WRITE": "race"}) is not cache


# == the test project: views, middleware, templates, sessions ==================================


@pytest.fixture
def project(location: str) -> t.Iterator[t.Any]:
    views = importlib.import_module(f"{PROJECT}.views")
    views.CALLS.clear()
    with override_settings(CACHES={"default": entry(location)}):
        yield views


def test_cache_page_serves_the_cached_response(project: t.Any) -> None:
    client = Client()
    first = client.get("/cached/")
    second = client.get("/cached/")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content == b"cached page, computed 1 time(s)"
    assert project.CALLS["cached_page"] == 1
    assert "max-age=60" in second["Cache-Control"]


def test_per_site_cache_middleware(project: t.Any) -> None:
    middleware = [
        "django.middleware.cache.UpdateCacheMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware):
        client = Client()
        bodies = [client.get("/plain/").content for _ in range(3)]
    assert bodies == [b"plain page, computed 1 time(s)"] * 3
    assert project.CALLS["plain"] == 1


def test_fragment_caching(project: t.Any) -> None:
    client = Client()
    first = client.get("/fragment/?name=Ada").content.decode()
    second = client.get("/fragment/?name=Ada").content.decode()
    assert "Hello Ada, fragment rendered 1 time(s)" in first
    assert first == second
    assert project.CALLS["fragment"] == 1
    other = client.get("/fragment/?name=Bob").content.decode()  # another vary-on value
    assert "Hello Bob, fragment rendered 2 time(s)" in other


def test_low_level_cache_in_a_view(project: t.Any) -> None:
    factory = RequestFactory()
    bodies = [project.low_level(factory.get("/low-level/")).content for _ in range(3)]
    assert bodies == [b"answer=42 visits=1", b"answer=42 visits=2", b"answer=42 visits=3"]
    assert project.CALLS["expensive"] == 1


def test_sessions_in_the_cache_persist_across_requests(project: t.Any) -> None:
    client = Client()
    assert [client.get("/session/").content for _ in range(3)] == [
        b"count=1",
        b"count=2",
        b"count=3",
    ]
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    stored = caches["default"].get(f"django.contrib.sessions.cache{session_key}")
    assert stored == {"count": 3}
    assert Client().get("/session/").content == b"count=1"  # a new client, a new session


def test_check_passes(location: str) -> None:
    out = io.StringIO()
    with override_settings(CACHES={"default": entry(location, OPTIONS={"MAX_ENTRIES": 500})}):
        call_command("check", stdout=out)
    assert "no issues" in out.getvalue()
