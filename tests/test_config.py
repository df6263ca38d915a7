"""Locations, CacheOptions, compressors and build_l2: the core configuration."""

from __future__ import annotations

import typing as t

import pytest

from tieredcache import ConfigurationError
from tieredcache import MemoryBackend
from tieredcache.compressors import CODECS
from tieredcache.compressors import CompressingSerializer
from tieredcache.config import build_cache
from tieredcache.config import build_l2
from tieredcache.errors import DeserializationError
from tieredcache.locations import Location
from tieredcache.locations import parse_location
from tieredcache.options import OPTIONS
from tieredcache.options import CacheOptions
from tieredcache.serializers import CompressedSerializer
from tieredcache.serializers import JSONSerializer


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, Location("sqlite")),
        ("redis://h:1?db=2", Location("redis", "redis://h:1?db=2")),
        ("redis://h:1/2", Location("redis", "redis://h:1/2")),
        ("h:6379:3", Location("redis", "redis://h:6379/3")),
        ("redis://h:6379:3", Location("redis", "redis://h:6379/3")),
        ("rediss://:pw@h:1/0", Location("redis", "rediss://:pw@h:1/0")),
        ("unix:///tmp/r.sock?db=1", Location("redis", "unix:///tmp/r.sock?db=1")),
        (
            ["redis://p:1/0", "redis://r:1/0"],
            Location("redis", "redis://p:1/0", ("redis://r:1/0",)),
        ),
        ("redis://p:1/0,redis://r:1/0", Location("redis", "redis://p:1/0", ("redis://r:1/0",))),
        (["redis://p:1/0", "redis://p:1/0"], Location("redis", "redis://p:1/0")),
        ("redis+cluster://a:1,b:2", Location("redis", "redis+cluster://a:1,b:2")),
        ("a:1;b:2", Location("memcached", ("a:1", "b:2"))),
        (["a:1", "memcached://b:2"], Location("memcached", ("a:1", "b:2"))),
        ("memory://", Location("memory", "")),
    ],
)
def test_locations(given: t.Any, expected: Location) -> None:
    assert parse_location(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("ftp://h", "cannot use the cache location"),
        (["redis://a:1", "a:2"], "Redis URLs only"),
        (["redis://a:1", "redis+sentinel://s:1/m"], "primary and its replicas"),
        (5, "must be a str"),
        ("sqlite://:memory:", "memory://"),
    ],
)
def test_bad_locations(given: t.Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_location(given)


def test_passwords_are_not_in_messages() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_location(["redis://u:secret@a:1", "a:2"])
    assert "secret" not in str(info.value)


def test_options_have_one_source_of_defaults() -> None:
    defaults = CacheOptions()
    assert OPTIONS["l1_maxsize"] == defaults.l1_maxsize == 10_000
    assert CacheOptions.from_mapping(None) == defaults
    assert set(OPTIONS) == {f for f in CacheOptions.__dataclass_fields__}


def test_from_mapping_reads_django_and_django_redis_names() -> None:
    options = CacheOptions.from_mapping(
        {
            "MAX_ENTRIES": 50,
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 1,
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "CULL_FREQUENCY": 3,
            "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
            "COMPRESSOR": "django_redis.compressors.lzma.LzmaCompressor",
            "CONNECTION_POOL_KWARGS": {"max_connections": 10},
            "PASSWORD": "pw",
        }
    )
    assert options == CacheOptions(
        l1_maxsize=50,
        connect_timeout=2.0,
        socket_timeout=1.0,
        serializer="json",
        compressor="lzma",
        connection_pool_kwargs=(("max_connections", 10),),
        password="pw",
    )
    assert hash(options) == hash(
        CacheOptions.from_mapping({"max_entries": 50}).replace(
            connect_timeout=2,
            socket_timeout=1,
            serializer="JSON",
            compressor="lzma",
            connection_pool_kwargs={"max_connections": 10},
            password="pw",
        )
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"client_class": "django_redis.client.ShardClient"}, "CLIENT_CLASS"),
        ({"serializer": "django_redis.serializers.msgpack.MSGPackSerializer"}, "no tieredcache"),
        ({"compressor": "brotli"}, "compressor must be one of"),
        ({"max_entries": 5, "l1_maxsize": 5}, "given twice"),
        ({"MAX_ENTRYS": 5}, "unknown cache option 'MAX_ENTRYS'.*MAX_ENTRIES"),
        ({"connection_pool_kwargs": {"decode_responses": True}}, "decode_responses"),
        ({"connection_pool_kwargs": {"x": []}}, "hashable"),
        ({"l1_maxsize": "10"}, "l1_maxsize must be an int"),
    ],
)
def test_bad_options(options: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CacheOptions.from_mapping(options)


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_round_trips_and_reads_the_others(codec: str) -> None:
    value = {"text": "x" * 5000, "n": list(range(100))}
    mine = CompressingSerializer(codec=codec, threshold=10)
    data = mine.dumps(value)
    assert len(data) < len(CompressingSerializer(threshold=10**9).dumps(value))
    assert mine.loads(data) == value
    for other in CODECS:  # the marker names the codec, so a reconfigured cache reads it
        assert CompressingSerializer(codec=other).loads(data) == value
    assert mine.loads(mine.dumps("tiny")) == "tiny"  # under the threshold: stored raw


def test_zlib_payloads_are_read_both_ways() -> None:
    old, new = CompressedSerializer(threshold=0), CompressingSerializer(threshold=0)
    assert new.loads(old.dumps("x" * 100)) == "x" * 100
    assert old.loads(new.dumps("y" * 100)) == "y" * 100


def test_bad_payloads_are_deserialization_errors() -> None:
    serializer = CompressingSerializer(JSONSerializer(), codec="zstd")
    for data in (b"", b"\x09abc", b"\x05not zstd"):
        with pytest.raises(DeserializationError):
            serializer.loads(data)


def test_compressor_option_compresses_l2_payloads(tmp_path: t.Any) -> None:
    cache = build_cache(f"sqlite://{tmp_path}/c.sqlite3", {"COMPRESSOR": "gzip"})
    try:
        cache.set("big", "z" * 10_000)
        cache.l1.clear()
        assert cache.get("big") == "z" * 10_000
        serializer = cache.l2.serializer  # type: ignore[attr-defined]
        assert isinstance(serializer, CompressingSerializer) and serializer.codec == "gzip"
        assert serializer.threshold == 1024
    finally:
        cache.close()


def test_build_l2_builds_the_store_alone(tmp_path: t.Any) -> None:
    from tieredcache import SQLiteBackend

    store = build_l2(f"sqlite://{tmp_path}/c.sqlite3")
    assert isinstance(store, SQLiteBackend)
    store.close()
    assert isinstance(build_l2("memory://", CacheOptions(l1_maxsize=3)), MemoryBackend)
    with pytest.raises(ConfigurationError, match="l2_prefix"):
        build_l2(f"sqlite://{tmp_path}/c.sqlite3", CacheOptions(l2_prefix="x:"))


@pytest.mark.redis
def test_password_and_pool_kwargs_reach_the_redis_client(redis_url: str) -> None:
    cache = build_cache(
        redis_url,
        {
            "PASSWORD": "ignored-by-a-server-without-auth",
            "CONNECTION_POOL_KWARGS": {"max_connections": 7},
        },
    )
    try:
        kwargs = cache.l2.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
        assert kwargs["password"] == "ignored-by-a-server-without-auth"
        assert cache.l2.client.connection_pool.max_connections == 7  # type: ignore[attr-defined]
    finally:
        cache.close()


def test_cli_demo_takes_its_l2_from_the_shared_parser() -> None:
    import io

    from tieredcache.cli import demo

    out = io.StringIO()
    assert demo("ftp://nowhere", out) == 2
    assert "cannot use the cache location" in out.getvalue()
    out = io.StringIO()
    assert demo("memory://", out) == 0
