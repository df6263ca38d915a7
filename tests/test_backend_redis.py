"""RedisBackend: the contract on a real server, plus what only Redis does.

Server-side expiry, ``clear()`` that leaves other data alone, the Lua ``add``/``touch``
reading the envelope header, error translation against dead and paused servers, and the
Sentinel/Cluster URL forms.
"""

from __future__ import annotations

import logging
import struct
import time
import typing as t

import pytest
import redis
import redis.exceptions
import redis.sentinel

from tieredcache import BackendError
from tieredcache import BackendResponseError
from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import CircuitBreaker
from tieredcache import CompressedSerializer
from tieredcache import ConfigurationError
from tieredcache import Entry
from tieredcache import EntryCodec
from tieredcache import RedisBackend
from tieredcache import Serializer
from tieredcache import SignedSerializer
from tieredcache.breaker import CircuitOpenError
from tieredcache.breaker import is_availability_failure
from tieredcache.redis.connect import RedisTarget as _RedisTarget
from tieredcache.redis.connect import parse_url as _parse_url
from tieredcache.redis.connect import translate as _translate
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.contract import BackendContract
from tieredcache.testing.servers import RedisServer
from tieredcache.testing.servers import free_port

SERIALIZERS: dict[str, t.Callable[[], Serializer | None]] = {
    "pickle": lambda: None,
    "zlib": lambda: CompressedSerializer(threshold=64),
    "signed": lambda: SignedSerializer("secret"),
}

PREFIXES = {"noprefix": "", "prefix": "app:"}

VARIANTS = [
    pytest.param((prefix, serializer), id=f"{prefix_id}-{serializer}")
    for prefix_id, prefix in PREFIXES.items()
    for serializer in SERIALIZERS
]

Factory = t.Callable[..., RedisBackend]


@pytest.fixture
def raw(redis_url: str) -> t.Iterator[redis.Redis]:
    """A plain client on the test's database, bypassing the backend."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def make_redis(redis_url: str) -> t.Iterator[Factory]:
    """``make_redis(**options)``: backends on the test's database, closed at teardown."""
    made: list[RedisBackend] = []

    def factory(url: str = redis_url, **options: t.Any) -> RedisBackend:
        backend = RedisBackend.from_url(url, **options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


class TestRedisBackend(BackendContract):
    @pytest.fixture(params=VARIANTS)
    def make_backend(self, request: pytest.FixtureRequest, make_redis: Factory) -> Factory:
        prefix, serializer = request.param

        def factory(**options: t.Any) -> RedisBackend:
            if "serializer" not in options:
                options["serializer"] = SERIALIZERS[serializer]()
            return make_redis(prefix=prefix, **options)

        return factory

    def write_raw(self, backend: RedisBackend, key: str, data: bytes) -> None:  # type: ignore[override]
        # The backend's own client is a plain redis.Redis: write around the codec with it.
        backend.client.set((backend.prefix + key).encode(), data)

    min_lifetime = 1.0  # Redis expires keys in real time, to the millisecond


# -- clear ------------------------------------------------------------------------------


def test_clear_keeps_keys_outside_the_prefix(make_redis: Factory, raw: redis.Redis) -> None:
    # Glob characters in the prefix must match literally: unescaped, "a*[x]:*" matches "abx:k".
    backend = make_redis(prefix="a*[x]:")
    other = make_redis(prefix="other:")
    foreign = [b"abx:k", b"a*[x]", b"a*[x]-k", b"plain"]
    for key in foreign:
        raw.set(key, b"theirs")
    backend.set_many({f"k{i}": i for i in range(10)})
    other.set("k", "other's")
    backend.clear()
    assert backend.get_many([f"k{i}" for i in range(10)]) == {}
    assert other.get("k") == "other's"
    assert all(raw.get(key) == b"theirs" for key in foreign)


def test_clear_without_prefix_removes_only_envelopes(make_redis: Factory, raw: redis.Redis) -> None:
    backend = make_redis()
    raw.set("plain", "a plain string")
    raw.set("almost", b"TC\x02 another format")
    raw.hset("hash", mapping={"field": "value"})
    raw.rpush("list", "a", "b")
    raw.sadd("set", "member")
    backend.set_many({f"k{i}": i for i in range(10)})
    backend.set("forever", "v", ttl=None)
    backend.clear()
    assert backend.get_many([f"k{i}" for i in range(10)] + ["forever"]) == {}
    assert sorted(raw.keys()) == [b"almost", b"hash", b"list", b"plain", b"set"]
    assert raw.get("plain") == b"a plain string"
    assert raw.hgetall("hash") == {b"field": b"value"}
    assert raw.lrange("list", 0, -1) == [b"a", b"b"]


@pytest.mark.parametrize("prefix", ["", "app:"], ids=["noprefix", "prefix"])
def test_clear_iterates_every_scan_batch(
    make_redis: Factory, raw: redis.Redis, prefix: str
) -> None:
    backend = make_redis(prefix=prefix)
    backend.set_many({f"k{i}": i for i in range(2500)})
    with raw.pipeline(transaction=False) as pipe:
        for i in range(300):
            pipe.set(f"zz-foreign:{i}", i)
        pipe.execute()
    assert raw.dbsize() == 2800
    backend.clear()
    assert raw.dbsize() == 300
    assert backend.get_many([f"k{i}" for i in range(0, 2500, 97)]) == {}


# -- server-side expiry ---------------------------------------------------------------------


def test_server_ttl_follows_the_entry(make_redis: Factory, raw: redis.Redis) -> None:
    backend = make_redis(prefix="p:")
    # In milliseconds, not rounded to whole seconds (a second of slack for a slow machine).
    backend.set("short", "v", ttl=30.25)
    assert 29_250 < raw.pttl("p:short") <= 30_250
    backend.set("forever", "v", ttl=None)
    assert raw.pttl("p:forever") == -1
    backend.set("later", "v", ttl=100)
    assert 99_000 < raw.pttl("p:later") <= 100_000
    backend.set("later", "v", ttl=None)
    assert raw.pttl("p:later") == -1
    backend.set_many({"a": 1, "b": 2}, ttl=30.25)
    assert all(29_250 < raw.pttl(f"p:{k}") <= 30_250 for k in "ab")
    backend.set_many({"a": 1}, ttl=None)
    assert raw.pttl("p:a") == -1


def test_server_ttl_is_relative_to_the_backend_clock(make_redis: Factory, raw: redis.Redis) -> None:
    # A fake clock far from real time still yields the intended remaining lifetime.
    backend = make_redis(timer=FakeClock(1_000_000_000.0))
    backend.set("k", "v", ttl=30)
    assert 29_000 < raw.pttl("k") <= 30_000


def test_sub_second_ttl_expires_on_the_server(make_redis: Factory, raw: redis.Redis) -> None:
    backend = make_redis(prefix="p:")
    backend.set("k", "v", ttl=0.05)
    assert wait_until(lambda: not raw.exists("p:k"), 2)
    assert backend.get("k") is None


def test_incr_and_touch_keep_or_set_the_server_ttl(make_redis: Factory, raw: redis.Redis) -> None:
    clock = FakeClock()
    backend = make_redis(timer=clock)
    backend.set("n", 1, ttl=100)
    assert backend.incr("n") == 2
    assert 99_000 < raw.pttl("n") <= 100_000
    assert backend.touch("n", ttl=None) is True
    assert raw.pttl("n") == -1
    assert backend.touch("n", ttl=30.25) is True
    assert 29_250 < raw.pttl("n") <= 30_250
    backend.set("forever", 1, ttl=None)
    assert backend.incr("forever") == 2
    assert raw.pttl("forever") == -1


# -- the envelope ---------------------------------------------------------------------------


def test_envelope_metadata_is_exactly_what_was_written(
    make_redis: Factory, raw: redis.Redis
) -> None:
    clock = FakeClock(1_700_000_000.123456)
    backend = make_redis(prefix="p:", timer=clock)
    entry = Entry("v", expires_at=clock() + 12.345678, version=2**62 + 7, stale_at=clock() + 1.5)
    backend.set_entry("k", entry)
    assert EntryCodec.read_header(raw.get("p:k")) == (entry.expires_at, entry.stale_at, 2**62 + 7)
    backend.set("s", "v", ttl=7.5)
    expires_at, stale_at, version = EntryCodec.read_header(raw.get("p:s"))
    assert expires_at == clock() + 7.5
    assert stale_at is None
    assert version == backend.get_entry("s").version  # type: ignore[union-attr]


def test_touch_rewrites_only_the_expiry(make_redis: Factory, raw: redis.Redis) -> None:
    clock = FakeClock()
    backend = make_redis(timer=clock, serializer=CompressedSerializer(threshold=64))
    value = {"payload": "x" * 500}
    backend.set_entry("k", Entry(value, clock() + 10, version=42, stale_at=clock() + 5))
    before = raw.get("k")
    assert backend.touch("k", ttl=60) is True
    after = raw.get("k")
    assert EntryCodec.read_header(after) == (clock() + 60, clock() + 5, 42)
    assert after[EntryCodec.header_size :] == before[EntryCodec.header_size :]
    assert backend.get_entry("k") == Entry(value, clock() + 60, 42, clock() + 5)
    assert backend.touch("k", ttl=None) is True
    assert EntryCodec.read_header(raw.get("k")) == (None, clock() + 5, 42)


def test_add_and_touch_see_an_entry_expired_by_the_backend_clock(
    make_redis: Factory, raw: redis.Redis
) -> None:
    clock = FakeClock()
    backend = make_redis(timer=clock)
    backend.set("k", "old", ttl=10)
    clock.advance(20)
    assert raw.exists("k")  # Redis keeps it: only the fake clock has moved
    assert backend.touch("k", ttl=100) is False
    with pytest.raises(KeyError):
        backend.incr("k")
    assert backend.add("k", "new", ttl=10) is True
    assert backend.get("k") == "new"
    assert backend.add("k", "newer", ttl=10) is False


def test_add_replaces_a_value_that_is_not_an_envelope(
    make_redis: Factory, raw: redis.Redis
) -> None:
    backend = make_redis()
    raw.set("k", "not ours")
    assert backend.get("k") is None
    assert backend.add("k", "ours") is True
    assert backend.get("k") == "ours"


# -- failures ---------------------------------------------------------------------------------


def test_killed_server_is_unavailable(make_redis: Factory, fresh_redis_server: RedisServer) -> None:
    backend = make_redis(fresh_redis_server.url, socket_timeout=2.0, connect_timeout=2.0)
    backend.set("k", "v")
    fresh_redis_server.kill()
    with pytest.raises(BackendUnavailableError) as info:
        backend.get("k")
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert info.value.backend == "redis"
    assert "ConnectionError" in str(info.value)
    assert backend.stats()["errors"] == 1


def test_closed_port_is_unavailable(make_redis: Factory) -> None:
    backend = make_redis(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=2.0)
    with pytest.raises(BackendUnavailableError) as info:
        backend.set("k", "v")
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(BackendUnavailableError):
        backend.get_many(["a", "b"])


def test_paused_server_times_out(make_redis: Factory, fresh_redis_server: RedisServer) -> None:
    backend = make_redis(fresh_redis_server.url, socket_timeout=0.3, connect_timeout=0.3)
    backend.set("k", "v")
    fresh_redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError) as info:
            backend.get("k")
        assert time.monotonic() - started < 5
        assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
    finally:
        fresh_redis_server.resume()
    assert backend.get("k") == "v"


def test_key_of_another_type_is_a_counted_miss(
    make_redis: Factory, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    backend = make_redis(prefix="p:")
    raw.hset("p:k", mapping={"a": "b"})  # someone else's hash under our key
    raw.rpush("p:l", "x")
    backend.set("ok", "fine")
    with caplog.at_level(logging.WARNING, logger="tieredcache"):
        assert backend.get("k", "default") == "default"
        assert backend.get_entry("l") is None
        assert backend.get_entries(["k"]) == {}
        assert backend.get_many(["k", "l", "ok"]) == {"ok": "fine"}  # MGET reads them as nil
        assert not backend.has("k")
    stats = backend.stats()
    assert stats["corrupt"] == 4 and stats["errors"] == 0
    assert stats["hits"] + stats["misses"] == 7
    assert sum("another Redis type" in r.getMessage() for r in caplog.records) == 4
    assert raw.type("p:k") == b"hash"  # a read never removes what it does not own
    backend.set("k", "mine")  # a write replaces it
    assert backend.get("k") == "mine"


def test_server_refusing_one_keys_command_is_a_response_error(
    make_redis: Factory, raw: redis.Redis
) -> None:
    backend = make_redis(prefix="p:")
    raw.hset("p:k", mapping={"a": "b"})
    for call in (lambda: backend.incr("k"), lambda: backend.add("k", 1)):
        with pytest.raises(BackendResponseError) as info:
            call()
        assert not isinstance(info.value, BackendUnavailableError)
        assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)
        assert "WRONGTYPE" in str(info.value)
    assert backend.stats()["errors"] == 0


def test_breaker_counts_only_availability_failures_of_a_real_server(
    make_redis: Factory, raw: redis.Redis, fresh_redis_server: RedisServer
) -> None:
    breaker = CircuitBreaker(failures=3, reset_after=60)
    backend = make_redis(prefix="p:")
    raw.hset("p:k", mapping={"a": "b"})
    refusals: list[BaseException] = []
    for _ in range(10):  # a key's error, ten times: the server is up
        try:
            backend.incr("k")
        except BackendError as exc:
            refusals.append(exc)
            breaker.record(exc)
    assert len(refusals) == 10 and breaker.state == "closed"
    assert not any(is_availability_failure(exc) for exc in refusals)

    paused = make_redis(fresh_redis_server.url, socket_timeout=0.2, connect_timeout=0.2)
    paused.set("k", "v")
    fresh_redis_server.pause()
    try:
        with pytest.raises(BackendTimeoutError) as timeout:
            paused.get("k")
    finally:
        fresh_redis_server.resume()
    assert is_availability_failure(timeout.value)
    killed = make_redis(fresh_redis_server.url, socket_timeout=1.0, connect_timeout=1.0)
    killed.set("k", "v")
    fresh_redis_server.kill()
    with pytest.raises(BackendUnavailableError) as down:
        killed.get("k")
    assert not isinstance(down.value, BackendTimeoutError)
    assert is_availability_failure(down.value)
    for exc in (timeout.value, down.value, down.value):
        breaker.record(exc)
    assert breaker.state == "open"
    assert not is_availability_failure(CircuitOpenError("refused", backend="l2"))


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (redis.exceptions.TimeoutError("Timeout reading from socket"), BackendTimeoutError),
        (TimeoutError("timed out"), BackendTimeoutError),
        (redis.exceptions.ConnectionError("Connection refused"), BackendUnavailableError),
        (redis.exceptions.BusyLoadingError("LOADING"), BackendUnavailableError),
        (redis.exceptions.MaxConnectionsError("Too many connections"), BackendUnavailableError),
        (redis.sentinel.MasterNotFoundError("No master found"), BackendUnavailableError),
        (ConnectionResetError("reset by peer"), BackendUnavailableError),
        (redis.exceptions.MaxClientsReachedError("max clients"), BackendUnavailableError),
        (redis.exceptions.InvalidResponse("Protocol Error"), BackendUnavailableError),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN"), BackendUnavailableError),
        (redis.exceptions.MasterDownError("MASTERDOWN"), BackendUnavailableError),
        (redis.exceptions.TryAgainError("TRYAGAIN"), BackendUnavailableError),
        (redis.exceptions.ResponseError("WRONGTYPE Operation"), BackendResponseError),
        (redis.exceptions.OutOfMemoryError("OOM command not allowed"), BackendResponseError),
        (redis.exceptions.ReadOnlyError("READONLY replica"), BackendResponseError),
        (redis.exceptions.NoScriptError("NOSCRIPT No matching script"), BackendResponseError),
        (redis.exceptions.DataError("Invalid input"), BackendError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_driver_errors_are_translated(
    driver_error: BaseException, expected: type[BackendError]
) -> None:
    error = _translate(driver_error, "redis://127.0.0.1:6379/0")
    assert type(error) is expected
    assert error.backend == "redis"
    assert str(driver_error) in str(error)


# -- clients, URLs, configuration ---------------------------------------------------------------


def test_passed_in_client_is_not_closed(raw: redis.Redis) -> None:
    backend = RedisBackend(raw, prefix="p:")
    backend.set("k", "v")
    connection_id = raw.client_id()
    backend.close()
    assert raw.client_id() == connection_id  # the same connection: the pool was left alone
    assert backend.get("k") == "v"


def test_owned_client_disconnects_on_close_and_reconnects(
    make_redis: Factory, raw: redis.Redis
) -> None:
    def connected() -> int:
        return sum(1 for c in raw.client_list() if c["name"] == "tc-owned")

    backend = make_redis(client_name="tc-owned")
    backend.set("k", "v")
    assert connected() == 1
    backend.close()
    assert wait_until(lambda: connected() == 0, 5)
    assert backend.get("k") == "v"
    assert connected() == 1


def test_constructor_checks(raw: redis.Redis, redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend(raw, prefix=b"bytes")  # type: ignore[arg-type]
    text_client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="decode_responses"):
            RedisBackend(text_client)
    finally:
        text_client.close()
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisBackend.from_url(redis_url, decode_responses=True)


def test_stats_and_repr(make_redis: Factory, redis_server: t.Any) -> None:
    backend = make_redis(prefix="app:")
    backend.set("k", "v")
    figures = backend.stats()
    assert figures["backend"] == "redis"
    assert figures["prefix"] == "app:"
    assert figures["pool_connections"] >= 1
    assert (
        repr(backend)
        == f"<RedisBackend redis://{redis_server.host}:{redis_server.port}/0 prefix='app:'>"
    )


def test_repr_and_errors_never_show_the_password(make_redis: Factory) -> None:
    backend = make_redis(f"redis://user:s3cret@127.0.0.1:{free_port()}/2", connect_timeout=2.0)
    assert "s3cret" not in repr(backend)
    assert repr(backend).endswith("/2 prefix=''>")
    with pytest.raises(BackendUnavailableError) as info:
        backend.get("k")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigurationError) as bad:
        RedisBackend.from_url("http://user:s3cret@example.com/")
    assert "s3cret" not in str(bad.value)


@pytest.mark.parametrize(
    "url", ["http://localhost/", "memcached://localhost:11211", "localhost:6379", "redis+x://h"]
)
def test_unknown_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisBackend.from_url(url)
    for scheme in ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://"):
        assert scheme in str(info.value)


def test_sentinel_url_parsing() -> None:
    target = _parse_url("redis+sentinel://:p%40ss@s1:26380,s2,[::1]:5000/mymaster/3")
    assert target == _RedisTarget(
        "sentinel",
        nodes=(("s1", 26380), ("s2", 26379), ("::1", 5000)),
        service_name="mymaster",
        db=3,
        password="p@ss",
    )
    assert "p@ss" not in repr(target)
    plain = _parse_url("redis+sentinel://user:pw@sentinel:26379/cache")
    assert (plain.service_name, plain.db, plain.username, plain.password) == (
        "cache",
        0,
        "user",
        "pw",
    )


def test_cluster_url_parsing() -> None:
    target = _parse_url("redis+cluster://:pw@n1:7000,n2:7001")
    assert target == _RedisTarget("cluster", nodes=(("n1", 7000), ("n2", 7001)), password="pw")
    assert _parse_url("redis+cluster://n1/0").nodes == (("n1", 6379),)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no service name
        "redis+sentinel://s1:26379/master/x",  # db is not a number
        "redis+sentinel://s1:26379/master/1/extra",
        "redis+sentinel://s1:notaport/master",
        "redis+sentinel://s1:70000/master",
        "redis+sentinel://:pw@/master",  # no host
        "redis+sentinel://s1/master?socket_timeout=1",
        "redis+cluster://n1:7000/1",  # a cluster has only db 0
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        _parse_url(url)


def test_standard_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:1/2", "rediss://u:p@h/0", "unix:///tmp/redis.sock?db=1"):
        assert _parse_url(url) == _RedisTarget("redis", url=url)


def test_sentinel_backend_is_built_without_connecting() -> None:
    port_a, port_b = free_port(), free_port()
    backend = RedisBackend.from_url(
        f"redis+sentinel://:s3cret@127.0.0.1:{port_a},127.0.0.1:{port_b}/mymaster/2",
        prefix="p:",
        socket_timeout=1.0,
        connect_timeout=1.0,
        max_connections=7,
    )
    try:
        pool = backend.client.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.max_connections == 7
        assert pool.connection_kwargs["db"] == 2
        assert pool.connection_kwargs["password"] == "s3cret"
        sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(s["host"], s["port"]) for s in sentinels] == [
            ("127.0.0.1", port_a),
            ("127.0.0.1", port_b),
        ]
        assert all(s.get("password") is None for s in sentinels)
        assert "s3cret" not in repr(backend)
        assert f"127.0.0.1:{port_a},127.0.0.1:{port_b}/mymaster/2" in repr(backend)
        with pytest.raises(BackendUnavailableError) as info:
            backend.get("k")  # no sentinel answers
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        backend.close()


def test_unreachable_cluster_is_unavailable() -> None:
    with pytest.raises(BackendUnavailableError) as info:
        RedisBackend.from_url(f"redis+cluster://127.0.0.1:{free_port()}", connect_timeout=1.0)
    assert info.value.__cause__ is not None


def test_header_layout_matches_the_lua_scripts() -> None:
    header = EntryCodec.header(1.5, None, 9)
    assert header[:3] == b"TC\x01"
    assert header[3] & 1 == 1
    assert struct.unpack(">d", header[4:12]) == (1.5,)
