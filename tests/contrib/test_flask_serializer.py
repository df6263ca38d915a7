"""The Flask-Caching backend's cachelib serializer (``CACHE_SERIALIZER``, ``serializer``).

cachelib's backends pass every value through a ``serializer`` attribute that users may
replace; Flask-Caching assigns ``CACHE_SERIALIZER`` to it. These tests run over real Redis,
memcached and SQLite stores, through Flask-Caching where that is how the serializer arrives.
"""

from __future__ import annotations

import ast
import logging
import pathlib
import typing as t
import uuid
import warnings

import flask
import flask_caching
import pytest
from cachelib.serializers import JSONSerializer
from cachelib.serializers import SimpleSerializer

from tieredcache.config import release_shared_caches
from tieredcache.contrib.flask import TieredCache
from tieredcache.errors import SerializationError

BACKEND = "tieredcache.contrib.flask.TieredCache"


class CountingJSON(JSONSerializer):
    """cachelib's JSON serializer, counting its calls."""

    def __init__(self) -> None:
        self.dumped = 0
        self.loaded = 0

    def dumps(self, value: t.Any, *args: t.Any, **kwargs: t.Any) -> bytes | None:
        self.dumped += 1
        return super().dumps(value, *args, **kwargs)

    def loads(self, bvalue: str | bytes | bytearray, *args: t.Any, **kwargs: t.Any) -> t.Any:
        self.loaded += 1
        return super().loads(bvalue, *args, **kwargs)


class ReprSerializer(SimpleSerializer):
    """A serializer whose format is easy to recognise in the store: ``repr``."""

    def dumps(self, value: t.Any, protocol: int | None = None) -> bytes:
        return b"repr:" + repr(value).encode()

    def loads(self, bvalue: bytes) -> t.Any:
        if not bvalue.startswith(b"repr:"):
            raise ValueError("not written by ReprSerializer")
        return ast.literal_eval(bvalue[5:].decode())


class ReprCache(TieredCache):
    serializer = ReprSerializer()


@pytest.fixture(autouse=True)
def _no_shared_state() -> t.Iterator[None]:
    release_shared_caches()
    yield
    release_shared_caches()


@pytest.fixture(params=["redis", "memcached", "sqlite"])
def location(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    if request.param == "redis":
        return t.cast(str, request.getfixturevalue("redis_url"))
    if request.param == "memcached":
        servers = request.getfixturevalue("memcached_servers")
        return "memcached://" + ",".join(f"{host}:{port}" for host, port in servers)
    return f"sqlite:///{tmp_path / 'cache.sqlite3'}"


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own, since the servers outlive a test."""
    return f"{uuid.uuid4().hex}:"


def flask_cache(location: str, prefix: str, **config: t.Any) -> tuple[flask.Flask, TieredCache]:
    app = flask.Flask("app")
    app.config.update(
        TESTING=True,
        CACHE_TYPE=BACKEND,
        CACHE_TIEREDCACHE_LOCATION=location,
        CACHE_KEY_PREFIX=prefix,
        **config,
    )
    cache = flask_caching.Cache(app)
    backend = app.extensions["cache"][cache]
    assert isinstance(backend, TieredCache)
    return app, backend


def test_default_serializer_is_cachelibs_pickle_left_to_tieredcache(
    location: str, prefix: str
) -> None:
    backend = TieredCache(location, key_prefix=prefix)
    assert isinstance(backend.serializer, SimpleSerializer)
    backend.set("k", (1, "a"))
    # The value reaches the core as it is: one pickling, tieredcache's.
    assert backend.cache.get(prefix + "k") == (1, "a")
    assert backend.get("k") == (1, "a")


def test_cache_serializer_is_used_without_a_warning(location: str, prefix: str) -> None:
    counting = CountingJSON()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, backend = flask_cache(location, prefix, CACHE_SERIALIZER=counting)
    assert backend.serializer is counting
    assert backend.set("k", {"a": [1, 2]})
    assert backend.get("k") == {"a": [1, 2]}
    assert (counting.dumped, counting.loaded) == (1, 1)
    assert backend.cache.get(prefix + "k") == b'{"a": [1, 2]}'


def test_every_tier_returns_what_the_serializer_decodes(location: str, prefix: str) -> None:
    # JSON turns a tuple into a list: a read from L1 and a read from L2 must agree.
    _, backend = flask_cache(location, prefix, CACHE_SERIALIZER=JSONSerializer)
    backend.set("k", (1, 2))
    assert backend.get("k") == [1, 2]
    backend.cache.l1.delete(prefix + "k")
    assert backend.get("k") == [1, 2]
    assert backend.get_many("k", "missing") == [[1, 2], None]
    assert backend.get_dict("k") == {"k": [1, 2]}


def test_serializer_of_a_subclass_and_of_an_instance(location: str, prefix: str) -> None:
    custom = ReprCache(location, key_prefix=prefix)
    assert custom.set_many({"a": {"x": (1,)}, "b": "text"}) == ["a", "b"]
    assert custom.cache.get(prefix + "a") == b"repr:{'x': (1,)}"
    assert custom.get_many("a", "b") == [{"x": (1,)}, "text"]
    assert custom.add("c", [None])
    assert not custom.add("c", "other")
    assert custom.get("c") == [None]

    plain = TieredCache(location, key_prefix=prefix + "p:")
    plain.serializer = ReprSerializer()
    plain.set("k", 1.5)
    assert plain.cache.get(prefix + "p:k") == b"repr:1.5"
    assert plain.get("k") == 1.5


def test_integers_are_kept_so_inc_stays_atomic(location: str, prefix: str) -> None:
    _, backend = flask_cache(location, prefix, CACHE_SERIALIZER=JSONSerializer)
    assert backend.set("n", 10)
    assert backend.cache.get(prefix + "n") == 10
    assert backend.inc("n", 5) == 15
    assert backend.dec("missing", 2) == -2
    assert backend.get_many("n", "missing") == [15, -2]
    # bool is not an integer here: it goes through the serializer, and comes back a bool.
    assert backend.set("flag", True)
    assert backend.cache.get(prefix + "flag") == b"true"
    assert backend.get("flag") is True


def test_a_value_the_serializer_cannot_dump_raises_and_writes_nothing(
    location: str, prefix: str
) -> None:
    _, backend = flask_cache(location, prefix, CACHE_SERIALIZER=JSONSerializer)
    backend.set("kept", "old")
    with pytest.raises(SerializationError, match="JSONSerializer"):
        backend.set("kept", {1, 2})  # a set is not JSON
    with pytest.raises(SerializationError):
        backend.set_many({"fresh": "fine", "bad": object()})
    with pytest.raises(SerializationError):
        backend.add("new", object())
    assert backend.get("kept") == "old"
    assert backend.get_many("fresh", "bad", "new") == [None, None, None]


def test_bytes_the_serializer_cannot_read_are_a_logged_miss(
    location: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = TieredCache(location, key_prefix=prefix)
    writer.set("k", b"not repr")
    reader = ReprCache(location, key_prefix=prefix)
    with caplog.at_level(logging.WARNING, logger="tieredcache"):
        assert reader.get("k") is None
        assert reader.get_many("k") == [None]
    assert "loads" in caplog.text
