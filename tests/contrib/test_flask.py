"""The Flask integration: the Flask-Caching backend (cachelib's contract) and the extension.

Every backend test goes through a real ``flask_caching.Cache`` configured with
``CACHE_TYPE = "tieredcache.contrib.flask.TieredCache"``, over real Redis, memcached and
SQLite stores; the extension tests run several apps in one process (the factory pattern).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import pathlib
import sys
import threading
import time
import typing as t
import urllib.parse

import cachelib
import flask
import flask_caching
import pytest
import redis

from tieredcache import Entry
from tieredcache import EntryCodec
from tieredcache import MemcachedBackend
from tieredcache import PickleSerializer
from tieredcache import RedisBackend
from tieredcache import SQLiteBackend
from tieredcache import TieredCache as CoreCache
from tieredcache.config import release_shared_caches
from tieredcache.config import shared_cache
from tieredcache.contrib.flask import TieredCache
from tieredcache.contrib.flask import TieredCacheExtension
from tieredcache.contrib.flask import TieredCacheState
from tieredcache.errors import ConfigurationError
from tieredcache.errors import InvalidKeyError
from tieredcache.testing.servers import free_port

BACKEND = "tieredcache.contrib.flask.TieredCache"
EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "flask_app.py"

# Values whose truthiness or emptiness a careless cache confuses with a miss.
SAMPLES: list[t.Any] = [False, 0, 0.0, "", b"", [], {}, (), "ünïcødé ✓", b"\x00\xff", [1, {"a": 2}]]


@pytest.fixture(autouse=True)
def _no_shared_state() -> t.Iterator[None]:
    # Shared caches are process-wide and keep an L1: every test starts and ends without any.
    release_shared_caches()
    yield
    release_shared_caches()


@pytest.fixture
def sqlite_location(tmp_path: pathlib.Path) -> str:
    return f"sqlite:///{tmp_path / 'cache.sqlite3'}"


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL on a loopback port nothing listens on: every command is refused."""
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture(params=["redis", "memcached", "sqlite", "memory"])
def location(request: pytest.FixtureRequest, sqlite_location: str) -> str:
    if request.param == "redis":
        return t.cast(str, request.getfixturevalue("redis_url"))
    if request.param == "memcached":
        servers = request.getfixturevalue("memcached_servers")
        return "memcached://" + ",".join(f"{host}:{port}" for host, port in servers)
    if request.param == "sqlite":
        return sqlite_location
    return "memory://"


def make_app(name: str = "app", **config: t.Any) -> flask.Flask:
    app = flask.Flask(name)
    app.config.update(TESTING=True, **config)
    return app


def make_cache(location: str, **config: t.Any) -> tuple[flask.Flask, flask_caching.Cache]:
    config.setdefault("CACHE_KEY_PREFIX", "t:")
    app = make_app()
    cache = flask_caching.Cache(
        app,
        config={"CACHE_TYPE": BACKEND, "CACHE_TIEREDCACHE_LOCATION": location, **config},
    )
    return app, cache


@pytest.fixture
def fcache(location: str) -> t.Iterator[flask_caching.Cache]:
    """A Flask-Caching ``Cache`` on the backend, inside an app context."""
    app, cache = make_cache(location)
    with app.app_context():
        yield cache


def backend_of(cache: flask_caching.Cache) -> TieredCache:
    backend = cache.cache
    assert isinstance(backend, TieredCache)
    return backend


# == the cachelib contract through Flask-Caching ============================================


class TestCachelibContract:
    def test_backend_is_a_cachelib_and_flask_caching_backend(
        self, fcache: flask_caching.Cache
    ) -> None:
        backend = backend_of(fcache)
        assert isinstance(backend, cachelib.BaseCache)
        assert isinstance(backend, flask_caching.backends.base.BaseCache)
        assert isinstance(backend.cache, CoreCache)
        assert backend.key_prefix == "t:"
        assert backend.default_timeout == 300

    def test_get_set_overwrite(self, fcache: flask_caching.Cache) -> None:
        assert fcache.get("k") is None
        assert fcache.set("k", "v1") is True
        assert fcache.get("k") == "v1"
        assert fcache.set("k", {"v": 2}) is True
        assert fcache.get("k") == {"v": 2}

    def test_falsy_and_odd_values_round_trip(self, fcache: flask_caching.Cache) -> None:
        for i, value in enumerate(SAMPLES):
            assert fcache.set(f"s{i}", value) is True
        for i, value in enumerate(SAMPLES):
            assert fcache.get(f"s{i}") == value
            assert fcache.has(f"s{i}") is True

    def test_stored_none_is_told_apart_by_has(self, fcache: flask_caching.Cache) -> None:
        assert fcache.set("none", None) is True
        assert fcache.get("none") is None
        assert fcache.has("none") is True
        assert fcache.has("absent") is False

    def test_add(self, fcache: flask_caching.Cache) -> None:
        assert fcache.add("a", 1) is True
        assert fcache.add("a", 2) is False
        assert fcache.get("a") == 1
        assert fcache.delete("a") is True
        assert fcache.add("a", 3) is True
        assert fcache.get("a") == 3

    def test_delete(self, fcache: flask_caching.Cache) -> None:
        fcache.set("d", "x")
        assert fcache.delete("d") is True
        assert fcache.get("d") is None
        assert fcache.has("d") is False
        assert fcache.delete("d") is False

    def test_get_many_and_get_dict_keep_key_order(self, fcache: flask_caching.Cache) -> None:
        fcache.set("m1", "one")
        fcache.set("m3", 3)
        assert fcache.get_many("m3", "m2", "m1") == [3, None, "one"]
        assert fcache.get_many("m1", "m1") == ["one", "one"]
        assert fcache.get_many() == []
        assert fcache.get_dict("m1", "m2", "m3") == {"m1": "one", "m2": None, "m3": 3}

    def test_set_many_returns_the_keys_set(self, fcache: flask_caching.Cache) -> None:
        mapping = {"x": 1, "y": [2], "z": None}
        assert fcache.set_many(mapping) == ["x", "y", "z"]
        assert fcache.get_many("x", "y", "z") == [1, [2], None]
        assert fcache.has("z") is True
        assert fcache.set_many({}) == []

    def test_delete_many_returns_the_keys_now_absent(self, fcache: flask_caching.Cache) -> None:
        fcache.set_many({"p": 1, "q": 2, "r": 3})
        # As in cachelib, a key that held nothing is absent afterwards and counts as deleted.
        assert fcache.delete_many("p", "q", "never") == ["p", "q", "never"]
        assert fcache.get_many("p", "q", "r") == [None, None, 3]
        assert fcache.delete_many() == []

    def test_clear(self, fcache: flask_caching.Cache) -> None:
        fcache.set_many({"c1": 1, "c2": 2})
        assert fcache.clear() is True
        assert fcache.get_many("c1", "c2") == [None, None]
        assert fcache.has("c1") is False

    def test_inc_and_dec_treat_a_missing_key_as_zero(self, fcache: flask_caching.Cache) -> None:
        backend = backend_of(fcache)
        assert backend.inc("hits") == 1
        assert backend.inc("hits", 5) == 6
        assert backend.dec("hits", 2) == 4
        assert fcache.get("hits") == 4
        assert backend.dec("down") == -1
        assert backend.dec("down", 3) == -4
        assert backend.inc("down", 10) == 6
        assert fcache.get("down") == 6
        # Created without expiry, as by RedisCache's INCRBY; kept by later increments.
        for name in ("t:hits", "t:down"):
            entry = backend.cache.get_entry(name)
            assert entry is not None and entry.expires_at is None

    def test_inc_on_a_non_integer_raises_type_error(self, fcache: flask_caching.Cache) -> None:
        fcache.set("text", "abc")
        with pytest.raises(TypeError):
            backend_of(fcache).inc("text")

    def test_key_prefix_is_applied_to_every_key(self, fcache: flask_caching.Cache) -> None:
        core = backend_of(fcache).cache
        fcache.set("one", 1)
        fcache.set_many({"two": 2})
        fcache.add("three", 3)
        backend_of(fcache).inc("four")
        assert core.get_many(["t:one", "t:two", "t:three", "t:four"]) == {
            "t:one": 1,
            "t:two": 2,
            "t:three": 3,
            "t:four": 1,
        }
        assert core.get_many(["one", "two", "three", "four"]) == {}


class TestTimeouts:
    """cachelib's timeouts: None is the default, 0 never expires (unlike Django and the core)."""

    def test_none_means_default_timeout(self, fcache: flask_caching.Cache) -> None:
        core = backend_of(fcache).cache
        before = time.time()
        fcache.set("k", 1)
        fcache.set("explicit", 1, timeout=None)
        for key in ("t:k", "t:explicit"):
            entry = core.get_entry(key)
            assert entry is not None and entry.expires_at is not None
            assert before + 299 <= entry.expires_at <= time.time() + 301

    def test_zero_means_never_expire(self, fcache: flask_caching.Cache) -> None:
        core = backend_of(fcache).cache
        assert fcache.set("forever", "v", timeout=0) is True
        assert fcache.add("forever-add", "v", timeout=0) is True
        assert fcache.set_many({"forever-many": "v"}, timeout=0) == ["forever-many"]
        for key in ("t:forever", "t:forever-add", "t:forever-many"):
            entry = core.get_entry(key)
            assert entry is not None and entry.expires_at is None
        assert fcache.get("forever") == "v"

    def test_short_timeout_expires(self, fcache: flask_caching.Cache) -> None:
        # A second: the read below comes well before it ends, even on a slow machine.
        assert fcache.set("brief", "v", timeout=1.0) is True
        assert fcache.set("timedelta", "v", timeout=dt.timedelta(milliseconds=1000)) is True
        assert fcache.get("brief") == "v"
        time.sleep(1.15)
        assert fcache.get("brief") is None
        assert fcache.get("timedelta") is None
        assert fcache.has("brief") is False

    def test_a_timeout_beyond_a_century_never_expires(self, fcache: flask_caching.Cache) -> None:
        core = backend_of(fcache).cache
        for timeout in (10**10, 10**400, dt.timedelta(days=365 * 1000)):
            assert fcache.set("far", "v", timeout=timeout) is True
            entry = core.get_entry("t:far")
            assert entry is not None and entry.expires_at is None
            assert fcache.get("far") == "v"

    def test_negative_timeout_stores_nothing(self, fcache: flask_caching.Cache) -> None:
        for timeout in (-1, -(10**400)):
            fcache.set("gone", "v")
            assert fcache.set("gone", "w", timeout=timeout) is True
            assert fcache.get("gone") is None
        assert fcache.add("never", "v", timeout=-1) is False
        assert fcache.has("never") is False

    def test_default_timeout_zero_never_expires(self, sqlite_location: str) -> None:
        app, cache = make_cache(sqlite_location, CACHE_DEFAULT_TIMEOUT=0)
        with app.app_context():
            cache.set("k", "v")
            entry = backend_of(cache).cache.get_entry("t:k")
            assert entry is not None and entry.expires_at is None

    def test_bad_timeout_type_raises_type_error(self, fcache: flask_caching.Cache) -> None:
        with pytest.raises(TypeError, match="timeout"):
            fcache.set("k", "v", timeout="soon")


# == store failures: cachelib reports them, it does not raise ===============================


class TestStoreFailures:
    @pytest.fixture
    def broken(self, dead_redis_url: str) -> t.Iterator[flask_caching.Cache]:
        app, cache = make_cache(
            dead_redis_url,
            CACHE_OPTIONS={"connect_timeout": 0.5, "socket_timeout": 0.5},
        )
        with app.app_context():
            yield cache

    def test_failures_are_reported_as_cachelib_does(
        self, broken: flask_caching.Cache, caplog: pytest.LogCaptureFixture
    ) -> None:
        backend = backend_of(broken)
        assert broken.get("k") is None
        assert broken.has("k") is False
        assert broken.get_many("a", "b") == [None, None]
        assert broken.get_dict("a") == {"a": None}
        assert broken.set("k", "v") is False
        assert broken.add("k2", "v") is False
        assert broken.set_many({"a": 1, "b": 2}) == []
        assert broken.delete("k") is False
        assert broken.clear() is False
        assert backend.inc("n") is None
        assert backend.dec("n") is None
        assert "failed, reported as cachelib does" in caplog.text

    def test_delete_many_raises_unless_errors_are_ignored(self, dead_redis_url: str) -> None:
        app, cache = make_cache(dead_redis_url, CACHE_OPTIONS={"connect_timeout": 0.5})
        with app.app_context(), pytest.raises(RuntimeError, match="Failed to delete keys"):
            cache.delete_many("a", "b")
        app, cache = make_cache(
            dead_redis_url, CACHE_IGNORE_ERRORS=True, CACHE_OPTIONS={"connect_timeout": 0.5}
        )
        with app.app_context():
            assert cache.delete_many("a", "b") == []

    def test_cached_view_still_answers_when_the_store_is_down(self, dead_redis_url: str) -> None:
        app, cache = make_cache(dead_redis_url, CACHE_OPTIONS={"connect_timeout": 0.5})
        calls = []

        @app.get("/")
        @cache.cached()
        def view() -> str:
            calls.append(1)
            return "body"

        client = app.test_client()
        assert client.get("/").data == b"body"
        assert client.get("/").data == b"body"
        # SequentialWrite wrote L1 before L2 refused (set returned False): L1 keeps the
        # value, as documented, and answers the second request.
        assert len(calls) == 1


# == decorators ============================================================================


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_cached_view_runs_its_body_once(
    kind: str, request: pytest.FixtureRequest, sqlite_location: str
) -> None:
    location = request.getfixturevalue("redis_url") if kind == "redis" else sqlite_location
    app, cache = make_cache(location)
    calls: list[int] = []

    @app.get("/page/<name>")
    @cache.cached(timeout=60)
    def page(name: str) -> str:
        calls.append(1)
        return f"hello {name} #{len(calls)}"

    client = app.test_client()
    first = client.get("/page/ada")
    assert first.status_code == 200
    for _ in range(3):
        assert client.get("/page/ada").data == first.data == b"hello ada #1"
    assert client.get("/page/bob").data == b"hello bob #2"
    assert len(calls) == 2


def test_cached_view_is_shared_by_two_apps_on_one_store(redis_url: str) -> None:
    # Two processes' worth of apps on one Redis: the second app's L1 is cold, L2 answers.
    calls: list[int] = []

    def build() -> flask.Flask:
        app, cache = make_cache(redis_url)

        @app.get("/")
        @cache.cached(timeout=60)
        def view() -> str:
            calls.append(1)
            return "shared"

        return app

    assert build().test_client().get("/").data == b"shared"
    release_shared_caches()  # forget the first app's L1
    assert build().test_client().get("/").data == b"shared"
    assert len(calls) == 1


def test_memoize_runs_once_per_arguments_and_delete_memoized(redis_url: str) -> None:
    app, cache = make_cache(redis_url)
    calls: list[tuple[int, int]] = []

    @cache.memoize(timeout=60)
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    with app.app_context():
        assert add(1, 2) == 3
        assert add(1, 2) == 3
        assert add(2, 3) == 5
        assert calls == [(1, 2), (2, 3)]
        cache.delete_memoized(add, 1, 2)
        assert add(1, 2) == 3
        assert add(2, 3) == 5
        assert calls == [(1, 2), (2, 3), (1, 2)]
        cache.delete_memoized(add)
        assert add(2, 3) == 5
        assert calls[-1] == (2, 3)


def test_memoize_caches_none_results(sqlite_location: str) -> None:
    app, cache = make_cache(sqlite_location)
    calls = []

    @cache.memoize(cache_none=True)
    def nothing() -> None:
        calls.append(1)

    with app.app_context():
        assert nothing() is None
        assert nothing() is None
    assert calls == [1]


# == configuration =========================================================================


def test_two_apps_with_different_configs_do_not_see_each_other(
    redis_url: str, sqlite_location: str
) -> None:
    app_r, cache_r = make_cache(redis_url, CACHE_KEY_PREFIX="red:")
    app_s, cache_s = make_cache(sqlite_location, CACHE_KEY_PREFIX="lite:")
    app_r2, cache_r2 = make_cache(redis_url, CACHE_KEY_PREFIX="red2:")
    with app_r.app_context():
        cache_r.set("k", "redis")
    with app_s.app_context():
        assert cache_s.get("k") is None
        cache_s.set("k", "sqlite")
    with app_r2.app_context():
        assert cache_r2.get("k") is None
        cache_r2.set("k", "redis2")
    with app_r.app_context():
        assert cache_r.get("k") == "redis"
        assert isinstance(backend_of(cache_r).cache.l2, RedisBackend)
    with app_s.app_context():
        assert cache_s.get("k") == "sqlite"
        assert isinstance(backend_of(cache_s).cache.l2, SQLiteBackend)
    with app_r2.app_context():
        assert cache_r2.get("k") == "redis2"
    with redis.Redis.from_url(redis_url) as client:
        assert sorted(client.keys("*")) == [b"red2:k", b"red:k"]


def test_same_configuration_shares_one_core_cache(redis_url: str) -> None:
    app1, cache1 = make_cache(redis_url, CACHE_KEY_PREFIX="a:")
    app2, cache2 = make_cache(redis_url, CACHE_KEY_PREFIX="b:")
    with app1.app_context():
        core1 = backend_of(cache1).cache
    with app2.app_context():
        core2 = backend_of(cache2).cache
    assert core1 is core2


def test_cache_redis_url_is_the_fallback_location(redis_url: str) -> None:
    app = make_app()
    cache = flask_caching.Cache(
        app, config={"CACHE_TYPE": BACKEND, "CACHE_REDIS_URL": redis_url, "CACHE_KEY_PREFIX": "u:"}
    )
    with app.app_context():
        assert isinstance(backend_of(cache).cache.l2, RedisBackend)
        cache.set("k", "v")
    with redis.Redis.from_url(redis_url) as client:
        assert client.exists(b"u:k")


def test_cache_redis_host_port_and_db_name_the_redis(redis_url: str) -> None:
    # Flask-Caching's RedisCache keys, without CACHE_REDIS_URL: the same Redis, database 3.
    parsed = urllib.parse.urlsplit(redis_url)
    app = make_app()
    config = {
        "CACHE_TYPE": BACKEND,
        "CACHE_REDIS_HOST": parsed.hostname,
        "CACHE_REDIS_PORT": parsed.port,
        "CACHE_REDIS_DB": 3,
        "CACHE_KEY_PREFIX": "h:",
    }
    cache = flask_caching.Cache(app, config=config)
    with app.app_context():
        assert isinstance(backend_of(cache).cache.l2, RedisBackend)
        cache.set("k", "v")
    with redis.Redis(host=parsed.hostname, port=parsed.port, db=3) as client:
        try:
            assert client.exists(b"h:k")
        finally:
            client.flushdb()


def test_tieredcache_location_wins_over_cache_redis_url(
    redis_url: str, sqlite_location: str
) -> None:
    app, cache = make_cache(sqlite_location, CACHE_REDIS_URL=redis_url)
    with app.app_context():
        assert isinstance(backend_of(cache).cache.l2, SQLiteBackend)


def test_memcached_location(memcached_servers: list[tuple[str, int]]) -> None:
    host, port = memcached_servers[0]
    app, cache = make_cache(f"{host}:{port}", CACHE_OPTIONS={"L1_MAXSIZE": 50})
    with app.app_context():
        core = backend_of(cache).cache
        assert isinstance(core.l2, MemcachedBackend)
        assert core.l1.maxsize == 50
        assert cache.set("k", "v") is True
        assert core.l2.get("t:k") == "v"


def test_embedded_default_location(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    app = make_app()
    cache = flask_caching.Cache(app, config={"CACHE_TYPE": BACKEND})
    with app.app_context():
        core = backend_of(cache).cache
        assert isinstance(core.l2, SQLiteBackend)
        assert core.l2.path == str(tmp_path / "tieredcache" / "default.sqlite3")
        assert cache.set("k", "v") is True
        assert cache.get("k") == "v"
        # Flask-Caching's default CACHE_KEY_PREFIX
        assert backend_of(cache).key_prefix == "flask_cache_"


def test_options_and_cache_args(redis_url: str, sqlite_location: str) -> None:
    app, cache = make_cache(
        redis_url,
        CACHE_OPTIONS={"l1_maxsize": 7, "read": "parallel", "l2_prefix": "app1/"},
        CACHE_ARGS=["memory://args", 42],
    )
    with app.app_context():
        backend = backend_of(cache)
        # CACHE_ARGS fill location and default_timeout positionally.
        assert backend.default_timeout == 42
        assert backend.location == "memory://args"
    release_shared_caches()
    app, cache = make_cache(redis_url, CACHE_OPTIONS={"l1_maxsize": 7, "l2_prefix": "app1/"})
    with app.app_context():
        core = backend_of(cache).cache
        assert core.l1.maxsize == 7
        cache.set("k", "v")
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys("*") == [b"app1/t:k"]


def test_direct_construction_like_cachelib_backends(redis_url: str) -> None:
    backend = TieredCache(
        location=redis_url, default_timeout=10, key_prefix=lambda: "fn:", l1_maxsize=20
    )
    assert backend.set("k", "v") is True
    assert backend.get("k") == "v"
    assert backend.cache.get("fn:k") == "v"
    assert backend.cache.l1.maxsize == 20
    positional = TieredCache(redis_url, dt.timedelta(minutes=1), "pos:", l1_maxsize=20)
    assert positional.default_timeout == 60
    assert positional.cache is backend.cache
    assert positional.get("k") is None


class TestSigning:
    @staticmethod
    def forge(redis_url: str, raw_key: bytes, value: t.Any) -> None:
        envelope = EntryCodec(PickleSerializer()).encode(Entry(value, None, 1))
        with redis.Redis.from_url(redis_url) as client:
            client.set(raw_key, envelope)

    def test_signed_by_default_with_secret_key(self, redis_url: str) -> None:
        app, cache = make_cache(redis_url, SECRET_KEY="s3cret", CACHE_KEY_PREFIX="sig:")
        with app.app_context():
            assert cache.set("real", "value") is True
        release_shared_caches()  # a new process: nothing in L1
        self.forge(redis_url, b"sig:victim", "forged")
        app, cache = make_cache(redis_url, SECRET_KEY="s3cret", CACHE_KEY_PREFIX="sig:")
        with app.app_context():
            assert cache.get("real") == "value"
            assert cache.get("victim") is None
            assert cache.has("victim") is False
            assert backend_of(cache).cache.l2.stats()["corrupt"] >= 1

    def test_another_secret_cannot_read_and_fallbacks_can(self, redis_url: str) -> None:
        app, cache = make_cache(redis_url, SECRET_KEY="old")
        with app.app_context():
            cache.set("k", "v")
        release_shared_caches()
        app, cache = make_cache(redis_url, SECRET_KEY="new")
        with app.app_context():
            assert cache.get("k") is None
        release_shared_caches()
        app, cache = make_cache(redis_url, SECRET_KEY="new", SECRET_KEY_FALLBACKS=["old"])
        with app.app_context():
            assert cache.get("k") == "v"

    def test_sign_false_opts_out(self, redis_url: str) -> None:
        self.forge(redis_url, b"sig:plain", "unsigned")
        app, cache = make_cache(
            redis_url, SECRET_KEY="s3cret", CACHE_KEY_PREFIX="sig:", CACHE_OPTIONS={"sign": False}
        )
        with app.app_context():
            assert cache.get("plain") == "unsigned"

    def test_no_secret_key_means_unsigned(self, redis_url: str) -> None:
        self.forge(redis_url, b"sig:plain", "unsigned")
        app, cache = make_cache(redis_url, CACHE_KEY_PREFIX="sig:")
        with app.app_context():
            assert cache.get("plain") == "unsigned"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"CACHE_OPTIONS": {"l1_maxsize": -1}}, "l1_maxsize must be an int >= 1"),
        ({"CACHE_OPTIONS": {"no_such_option": 1}}, "unknown cache option 'no_such_option'"),
        ({"CACHE_OPTIONS": {"read": "sideways"}}, "read must be one of"),
        ({"CACHE_OPTIONS": {"sign": True}}, "sign=True needs a secret key"),
        ({"CACHE_TIEREDCACHE_LOCATION": "ftp://example"}, "cannot use the cache location"),
        ({"CACHE_DEFAULT_TIMEOUT": -5}, "default_timeout must be >= 0"),
        ({"CACHE_KEY_PREFIX": 5}, "key_prefix must be a str"),
        ({"CACHE_ARGS": [None, 1, "p", "extra"]}, "CACHE_ARGS takes at most 3 values"),
    ],
)
def test_bad_configuration_raises_a_clear_error(config: dict[str, t.Any], message: str) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match=message):
        flask_caching.Cache(app, config={"CACHE_TYPE": BACKEND, **config})


# == the extension =========================================================================


def make_ext_app(name: str, ext: TieredCacheExtension, **config: t.Any) -> flask.Flask:
    app = make_app(name, **config)
    ext.init_app(app)

    @app.post("/<key>/<value>")
    def put(key: str, value: str) -> str:
        ext.set(key, value)
        return "ok"

    @app.get("/<key>")
    def fetch(key: str) -> str:
        return str(ext.get(key, "(missing)"))

    return app


class TestExtension:
    def test_init_app_on_two_apps(self, redis_url: str, sqlite_location: str) -> None:
        ext = TieredCacheExtension()
        red = make_ext_app("red", ext, TIEREDCACHE_LOCATION=redis_url, TIEREDCACHE_KEY_PREFIX="r:")
        lite = make_ext_app("lite", ext, TIEREDCACHE_LOCATION=sqlite_location)
        assert not hasattr(ext, "app")
        for app, l2_type in ((red, RedisBackend), (lite, SQLiteBackend)):
            state = app.extensions["tieredcache"]
            assert isinstance(state, TieredCacheState)
            assert isinstance(state.cache.l2, l2_type)
            assert state.default_ttl == 300
        red_client, lite_client = red.test_client(), lite.test_client()
        assert red_client.post("/k/apple").data == b"ok"
        assert lite_client.get("/k").data == b"(missing)"
        assert lite_client.post("/k/lemon").data == b"ok"
        assert red_client.get("/k").data == b"apple"
        assert lite_client.get("/k").data == b"lemon"
        with redis.Redis.from_url(redis_url) as client:
            assert client.keys("*") == [b"r:k"]

    def test_constructor_with_app(self, sqlite_location: str) -> None:
        app = make_app(TIEREDCACHE_LOCATION=sqlite_location)
        ext = TieredCacheExtension(app)
        with app.app_context():
            ext.set("k", 1)
            assert ext.get("k") == 1
            assert ext.cache is app.extensions["tieredcache"].cache

    def test_friendly_api_with_prefix(self, redis_url: str) -> None:
        ext = TieredCacheExtension()
        app = make_app(TIEREDCACHE_LOCATION=redis_url, TIEREDCACHE_KEY_PREFIX="x:")
        ext.init_app(app)
        with app.app_context():
            core = ext.cache
            assert ext.get("k") is None
            assert ext.get("k", "dflt") == "dflt"
            ext.set("k", "v")
            assert core.get("x:k") == "v"
            assert ext.add("k", "w") is False
            assert ext.add("a", "w") is True
            assert ext.has("a") is True
            ext.set_many({"m1": 1, "m2": 2})
            assert ext.get_many(["m1", "m2", "m3"]) == {"m1": 1, "m2": 2}
            assert ext.delete_many(["m1", "m2", "m3"]) == 2
            assert ext.delete("a") is True
            assert ext.delete("a") is False
            ext.set("n", 10)
            assert ext.incr("n") == 11
            assert ext.decr("n", 4) == 7
            with pytest.raises(KeyError):
                ext.incr("missing")
            assert ext.touch("n", 1000) is True
            assert ext.touch("missing") is False
            entry = core.get_entry("x:n")
            assert entry is not None and entry.expires_at is not None
            assert entry.expires_at > time.time() + 900
            loads = []
            assert ext.get_or_set("g", lambda: loads.append(1) or "loaded") == "loaded"
            assert ext.get_or_set("g", lambda: loads.append(1) or "again") == "loaded"
            assert loads == [1]
            assert core.get("x:g") == "loaded"
            ext.clear()
            assert ext.get("k") is None
            with pytest.raises(InvalidKeyError):
                ext.get(1)  # type: ignore[arg-type]

    def test_ttl_semantics_are_the_core_ones(self, sqlite_location: str) -> None:
        ext = TieredCacheExtension()
        app = make_app(TIEREDCACHE_LOCATION=sqlite_location, TIEREDCACHE_DEFAULT_TTL=50)
        ext.init_app(app)
        with app.app_context():
            ext.set("default", 1)
            ext.set("forever", 1, ttl=None)
            ext.set("zero", 1, ttl=0)
            default = ext.cache.get_entry("default")
            forever = ext.cache.get_entry("forever")
            assert default is not None and default.expires_at is not None
            assert default.expires_at <= time.time() + 50
            assert forever is not None and forever.expires_at is None
            assert ext.has("zero") is False
        release_shared_caches()
        app = make_app(TIEREDCACHE_LOCATION=sqlite_location, TIEREDCACHE_DEFAULT_TTL=None)
        ext.init_app(app)
        with app.app_context():
            ext.set("k", 1)
            entry = ext.cache.get_entry("k")
            assert entry is not None and entry.expires_at is None

    def test_requests_do_not_close_the_shared_cache(self, redis_url: str) -> None:
        ext = TieredCacheExtension()
        app = make_ext_app("app", ext, TIEREDCACHE_LOCATION=redis_url)
        core = app.extensions["tieredcache"].cache
        client = app.test_client()
        for i in range(3):
            assert client.post(f"/k/{i}").data == b"ok"
            assert client.get("/k").data == str(i).encode()
        assert shared_cache(redis_url) is core
        assert core.stats()["l1_hits"] >= 3

    def test_signed_by_default_and_opt_out(self, redis_url: str) -> None:
        envelope = EntryCodec(PickleSerializer()).encode(Entry("forged", None, 1))
        with redis.Redis.from_url(redis_url) as client:
            client.set(b"k", envelope)
        ext = TieredCacheExtension()
        signed = make_app("signed", TIEREDCACHE_LOCATION=redis_url, SECRET_KEY="s")
        unsigned = make_app(
            "unsigned",
            TIEREDCACHE_LOCATION=redis_url,
            SECRET_KEY="s",
            TIEREDCACHE_OPTIONS={"sign": False},
        )
        ext.init_app(signed)
        ext.init_app(unsigned)
        with signed.app_context():
            assert ext.get("k") is None
        with unsigned.app_context():
            assert ext.get("k") == "forged"

    def test_errors_outside_an_initialised_app(self, sqlite_location: str) -> None:
        ext = TieredCacheExtension()
        app = make_app(TIEREDCACHE_LOCATION=sqlite_location)
        with app.app_context(), pytest.raises(RuntimeError, match="not initialised"):
            ext.get("k")
        with pytest.raises(RuntimeError):
            ext.get("k")  # no app context at all
        ext.init_app(app)
        with pytest.raises(RuntimeError, match="already initialised"):
            ext.init_app(app)

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"TIEREDCACHE_DEFAULT_TTL": "soon"}, "TIEREDCACHE_DEFAULT_TTL must be a number"),
            ({"TIEREDCACHE_DEFAULT_TTL": 0}, "TIEREDCACHE_DEFAULT_TTL must be a positive"),
            ({"TIEREDCACHE_KEY_PREFIX": 3}, "TIEREDCACHE_KEY_PREFIX must be a str"),
            ({"TIEREDCACHE_OPTIONS": ["l1_maxsize"]}, "TIEREDCACHE_OPTIONS must be a dict"),
            ({"TIEREDCACHE_OPTIONS": {"write": "never"}}, "write must be one of"),
            ({"TIEREDCACHE_LOCATION": "nowhere"}, "cannot use the cache location 'nowhere'"),
        ],
    )
    def test_bad_configuration_raises_a_clear_error(
        self, config: dict[str, t.Any], message: str
    ) -> None:
        app = make_app(**config)
        with pytest.raises(ConfigurationError, match=message):
            TieredCacheExtension().init_app(app)
        assert "tieredcache" not in app.extensions


# == the example app =======================================================================


@pytest.fixture
def example() -> t.Any:
    spec = importlib.util.spec_from_file_location("tieredcache_flask_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_example_app(
    kind: str, example: t.Any, request: pytest.FixtureRequest, sqlite_location: str
) -> None:
    location = request.getfixturevalue("redis_url") if kind == "redis" else sqlite_location
    app = example.create_app({"TIEREDCACHE_LOCATION": location, "SECRET_KEY": "test"})
    client = app.test_client()
    assert client.get("/").get_json() == {"visits": 1}
    assert client.get("/").get_json() == {"visits": 2}
    first = client.get("/square/12").get_json()
    again = client.get("/square/12").get_json()
    assert first["square"] == again["square"] == 144
    assert again["ms"] < first["ms"]
    clock = client.get("/clock").get_json()
    assert client.get("/clock").get_json() == clock
    stats = client.get("/stats").get_json()
    assert stats["hits"] >= 2
    # A second app from the same factory is independent of the first one's config.
    other = example.create_app(
        {"TIEREDCACHE_LOCATION": f"{sqlite_location}-other", "SECRET_KEY": "test"}
    )
    assert other.test_client().get("/").get_json() == {"visits": 1}


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_concurrent_inc_on_a_missing_key_loses_no_update(
    kind: str, request: pytest.FixtureRequest, sqlite_location: str
) -> None:
    location = request.getfixturevalue("redis_url") if kind == "redis" else sqlite_location
    backend = TieredCache(location, key_prefix="race:")
    threads, rounds = 8, 25
    barrier = threading.Barrier(threads)
    results: list[int | None] = []

    def work() -> None:
        barrier.wait()
        for _ in range(rounds):
            results.append(backend.inc("counter"))

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert backend.get("counter") == threads * rounds
    assert sorted(t.cast(list[int], results)) == list(range(1, threads * rounds + 1))
