"""The direct protocol path on a real server: replies of any size and however they are cut
come out whole, error replies are redis-py's exceptions and leave the connection usable, and
a connection that failed halfway (timeout, closed, killed server) is never used again.

Every behaviour is checked with each way of reading: the socket parsed by the reader's own
parser, by hiredis when it is installed, and a connection class of the test's own, which
the path uses through redis-py's ``send_packed_command`` and ``read_response``.
"""

from __future__ import annotations

import typing as t

import pytest
import redis
import redis.exceptions

from tieredcache import RedisBackend
from tieredcache.redis import frames
from tieredcache.redis.direct import RETRY_THROUGH_CLIENT
from tieredcache.redis.direct import DirectCommands
from tieredcache.redis.direct import pack
from tieredcache.redis.direct import pack_set
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.servers import RedisServer

MODES = ["pure", *(["hiredis"] if frames.hiredis is not None else []), "driver"]

MIB = 1024 * 1024


class DriverConnection(redis.Connection):
    """Not one of redis-py's own classes: the direct path sends and reads through it."""

    sends = 0

    def send_packed_command(self, command: t.Any, check_health: bool = True) -> None:
        DriverConnection.sends += 1
        super().send_packed_command(command, check_health)


class Made(t.NamedTuple):
    client: redis.Redis
    direct: DirectCommands


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(mode: str) -> t.Iterator[t.Callable[..., Made]]:
    """``make(url, read_size=..., **client_options)``: a client and its direct path."""
    made: list[Made] = []

    def factory(url: str, *, read_size: int = 65536, **options: t.Any) -> Made:
        if mode == "driver":
            options["connection_class"] = DriverConnection
        timer = options.pop("timer", None)
        client = redis.Redis.from_url(url, **options)
        assert DirectCommands.for_client(client) is not None
        kwargs: dict[str, t.Any] = {} if timer is None else {"timer": timer}
        direct = DirectCommands(
            client.connection_pool, use_hiredis=mode == "hiredis", read_size=read_size, **kwargs
        )
        made.append(Made(client, direct))
        return made[-1]

    DriverConnection.sends = 0
    yield factory
    for client, direct in made:
        direct.close()
        client.close()
    if mode == "driver":
        assert DriverConnection.sends > 0  # the driver path was the one tested
    else:
        assert DriverConnection.sends == 0


def get(key: bytes) -> bytes:
    return pack(b"GET", key)


def client_id(direct: DirectCommands) -> int:
    return int(direct.call(pack(b"CLIENT", b"ID")))


# -- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("read_size", [65536, 1000])
def test_a_mebibyte_value_round_trips(
    make: t.Callable[..., Made], redis_url: str, read_size: int
) -> None:
    client, direct = make(redis_url, read_size=read_size)
    big = bytes(range(256)) * (4 * 1024)  # 1 MiB, every byte value
    assert len(big) == MIB
    assert direct.call(pack_set(b"big", big, None)) == b"OK"
    assert client.get(b"big") == big
    assert direct.call(get(b"big")) == big
    assert direct.call(pack(b"MGET", b"small", b"big", b"none", b"big")) == [None, big, None, big]
    client.set(b"small", b"s")
    previous = direct.call(pack_set(b"big", b"x", 60_000, get=True))
    assert previous == big
    assert direct.call(pack(b"MGET", b"small", b"big")) == [b"s", b"x"]
    assert direct.open == 1 and direct.in_use == 0  # one connection, back on the free list


def test_pipelined_replies_cut_across_reads(make: t.Callable[..., Made], redis_url: str) -> None:
    client, direct = make(redis_url, read_size=7)  # "+OK\r\n" and "$2\r\nab\r\n" cut anywhere
    count = 40
    keys = [b"k%d" % i for i in range(count)]
    packed = b"".join(pack_set(key, b"v%d" % i, None) for i, key in enumerate(keys))
    assert direct.call(packed, replies=count) == [b"OK"] * count
    assert client.mget(keys) == [b"v%d" % i for i in range(count)]
    swapped = b"".join(pack_set(key, b"w", 60_000, get=True) for key in [*keys, b"new"])
    assert direct.call(swapped, replies=count + 1) == [b"v%d" % i for i in range(count)] + [None]
    assert direct.call(pack(b"UNLINK", *keys, b"absent")) == count
    assert direct.call(get(b"new")) == b"w"
    assert direct.open == 1


# -- error replies ----------------------------------------------------------------------------


def test_an_error_reply_is_redis_pys_exception_and_the_connection_stays(
    make: t.Callable[..., Made], redis_url: str
) -> None:
    client, direct = make(redis_url)
    client.hset(b"h", mapping={b"a": b"b"})
    before = client_id(direct)
    with pytest.raises(redis.exceptions.ResponseError) as info:
        direct.call(get(b"h"))
    with pytest.raises(redis.exceptions.ResponseError) as expected:
        client.get(b"h")
    assert type(info.value) is type(expected.value)
    assert str(info.value) == str(expected.value) and str(info.value).startswith("WRONGTYPE")
    with pytest.raises(redis.exceptions.ResponseError) as syntax:
        direct.call(pack(b"SET", b"k", b"v", b"NOPE"))
    assert "syntax" in str(syntax.value).lower()
    client.set(b"k", b"v")
    assert direct.call(get(b"k")) == b"v"  # its own reply, on the same connection
    assert client_id(direct) == before and direct.open == 1


def test_errors_inline_take_their_place_and_raised_otherwise(
    make: t.Callable[..., Made], redis_url: str
) -> None:
    client, direct = make(redis_url, read_size=16)
    client.hset(b"h", mapping={b"a": b"b"})
    client.set(b"b", b"old")
    before = client_id(direct)
    packed = b"".join(pack_set(key, b"new", None, get=True) for key in (b"a", b"h", b"b"))
    a, h, b = direct.call(packed, replies=3, errors_inline=True)
    assert (a, b) == (None, b"old")
    assert isinstance(h, redis.exceptions.ResponseError) and "WRONGTYPE" in str(h)
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        direct.call(packed, replies=3)  # every reply is read, then the first error raised
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        direct.call(pack_set(b"h", b"new", None, get=True), errors_inline=True)  # one reply
    assert client.mget([b"a", b"b"]) == [b"new", b"new"]
    assert direct.call(get(b"a")) == b"new"
    assert client_id(direct) == before and direct.open == 1


# -- failures ---------------------------------------------------------------------------------


def test_a_timeout_discards_the_connection_and_no_one_reads_its_late_reply(
    make: t.Callable[..., Made], fresh_redis_server: RedisServer
) -> None:
    client, direct = make(fresh_redis_server.url, socket_timeout=0.3)
    client.set(b"first", b"1")
    client.set(b"second", b"2")
    assert direct.call(get(b"first")) == b"1"
    fresh_redis_server.pause()
    try:
        with pytest.raises(redis.exceptions.TimeoutError):
            direct.call(get(b"first"))
        assert direct.open == 0  # discarded, not returned to the free list
    finally:
        fresh_redis_server.resume()
    assert direct.call(get(b"second")) == b"2"  # not the late b"1"
    assert direct.call(pack(b"MGET", b"second", b"first")) == [b"2", b"1"]
    assert direct.open == 1


def test_a_connection_closed_by_the_server_is_a_connection_error(
    make: t.Callable[..., Made], redis_url: str
) -> None:
    client, direct = make(redis_url)
    client.set(b"k", b"v")
    before = client_id(direct)
    client.client_kill_filter(_id=before)
    with pytest.raises(redis.exceptions.ConnectionError) as info:
        direct.call(get(b"k"))
    assert isinstance(info.value, RETRY_THROUGH_CLIENT)
    assert direct.open == 0
    assert direct.call(get(b"k")) == b"v"
    assert client_id(direct) != before


def test_a_killed_server_is_a_connection_error_until_it_is_back(
    make: t.Callable[..., Made], fresh_redis_server: RedisServer
) -> None:
    _, direct = make(fresh_redis_server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    assert direct.call(pack_set(b"k", b"v", None)) == b"OK"
    fresh_redis_server.kill()
    for _ in range(2):  # the connection it had, then a new one that cannot connect
        with pytest.raises(redis.exceptions.ConnectionError):
            direct.call(get(b"k"))
        assert direct.open == 0
    fresh_redis_server.start()
    assert direct.call(get(b"k")) is None  # a new server, without persistence
    assert direct.call(pack_set(b"k", b"w", None)) == b"OK"
    assert direct.call(get(b"k")) == b"w"


def test_an_idle_connection_is_replaced_after_the_health_check_interval(
    make: t.Callable[..., Made], redis_url: str, mode: str
) -> None:
    clock = FakeClock()
    _, direct = make(redis_url, health_check_interval=30, timer=clock)
    first = client_id(direct)
    clock.advance(29)
    assert client_id(direct) == first
    clock.advance(29)  # 29 s since its last use
    assert client_id(direct) == first
    clock.advance(31)
    if mode == "driver":  # redis-py checks it itself, with a PING on its own clock
        assert client_id(direct) == first
    else:
        assert client_id(direct) != first
    assert direct.open == 1


# -- through the backend ----------------------------------------------------------------------


def test_backend_reads_and_writes_big_values_and_batches(redis_url: str) -> None:
    with RedisBackend.from_url(redis_url, prefix="p:") as backend:
        big = b"\x00\xff" * (MIB // 2)
        backend.set("big", big)
        assert backend.get("big") == big
        items = {f"k{i}": b"x" * (i * 100) for i in range(60)}
        backend.set_many(items)
        assert backend.get_many([*items, "big", "missing"]) == {**items, "big": big}
        assert backend.delete_many([*items, "missing"]) == len(items)
        assert backend.stats()["errors"] == 0


def test_backend_goes_through_the_client_when_the_server_restarted(
    fresh_redis_server: RedisServer,
) -> None:
    with RedisBackend.from_url(
        fresh_redis_server.url, socket_timeout=2.0, connect_timeout=2.0
    ) as backend:
        backend.set("k", "v")
        assert backend.get("k") == "v"
        fresh_redis_server.restart()  # the direct connection is now closed
        assert backend.get("k") is None  # no error: sent again through the client
        backend.set("k", "w")
        assert backend.get("k") == "w"
        assert backend.stats()["errors"] == 0


def test_long_commands_pack_alike_with_and_without_hiredis(monkeypatch: pytest.MonkeyPatch) -> None:
    from tieredcache.redis import direct

    args = (b"MGET", *(b"p:key-%d" % i for i in range(50)), b"", b"\r\n$*")
    with_hiredis = pack(*args)
    monkeypatch.setattr(direct, "_pack_command", None)
    assert pack(*args) == with_hiredis
    assert with_hiredis.startswith(b"*53\r\n$4\r\nMGET\r\n") and with_hiredis.endswith(
        b"$0\r\n\r\n$4\r\n\r\n$*\r\n"
    )


def test_direct_connections_speak_resp2_whatever_the_drivers_default(
    make: t.Callable[..., Made], redis_url: str
) -> None:
    # RESP3 (redis-py's default since 8) lets the server push frames between replies: with
    # tracking on, a change of a read key pushes an invalidation, which must not be taken
    # for the reply of the next command.
    client, direct = make(redis_url)
    hello = direct.call(pack(b"HELLO"))
    assert hello[hello.index(b"proto") + 1] == 2
    assert direct.call(pack(b"CLIENT", b"TRACKING", b"on")) == b"OK"
    client.set("tracked", b"old")
    client.set("other", b"theirs")
    assert direct.call(get(b"tracked")) == b"old"
    client.set("tracked", b"new")
    assert direct.call(get(b"other")) == b"theirs"
    assert direct.call(get(b"tracked")) == b"new"


def test_a_publish_reaches_the_channel_as_the_client_encodes_it(redis_url: str) -> None:
    from tieredcache.redis.publisher import Publisher

    with redis.Redis.from_url(redis_url, encoding="latin-1", protocol=2) as client:
        subscriber = client.pubsub()
        try:
            subscriber.subscribe("café")
            assert subscriber.get_message(timeout=5)["type"] == "subscribe"
            assert DirectCommands.for_client(client) is not None  # the path tested
            Publisher(client, "café").send(b"hello")
            message = subscriber.get_message(timeout=5)
            assert message is not None and message["data"] == b"hello"
        finally:
            subscriber.close()
