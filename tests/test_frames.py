"""The subscriber's frame reader: every frame comes out whole and in order however the bytes
are cut, with hiredis and with the reader's own parser; and the socket source feeds a real
subscription."""

from __future__ import annotations

import typing as t

import hypothesis.strategies as st
import pytest
import redis
import redis.exceptions
from hypothesis import given

from tieredcache.redis import frames
from tieredcache.redis.frames import FrameReader
from tieredcache.redis.frames import ProtocolError
from tieredcache.redis.pubsub import SocketSource

PARSERS = [False] + ([True] if frames.hiredis is not None else [])


def encode(frame: t.Any) -> bytes:
    if isinstance(frame, list):
        return b"*%d\r\n" % len(frame) + b"".join(encode(item) for item in frame)
    if isinstance(frame, int):
        return b":%d\r\n" % frame
    return b"$%d\r\n%b\r\n" % (len(frame), frame)


FRAMES = st.lists(
    st.lists(st.one_of(st.binary(max_size=40), st.integers(-(2**40), 2**40)), max_size=4),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("use_hiredis", PARSERS)
@given(sent=FRAMES, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_frames_come_out_whole_and_in_order(
    use_hiredis: bool, sent: list[list[t.Any]], cuts: list[int]
) -> None:
    data = b"".join(encode(frame) for frame in sent)
    reader = FrameReader(use_hiredis=use_hiredis)
    received: list[t.Any] = []
    at = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        reader.feed(data[at:cut])
        at = cut
        received.extend(reader.frames())
    assert received == sent


@pytest.mark.parametrize("use_hiredis", PARSERS)
def test_resp3_pushes_and_nulls(use_hiredis: bool) -> None:
    reader = FrameReader(use_hiredis=use_hiredis)
    reader.feed(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nd\r\n_\r\n+PONG\r\n")
    assert reader.frames() == [[b"message", b"c", b"d"], None, b"PONG"]


@pytest.mark.parametrize("use_hiredis", PARSERS)
def test_errors_are_frames_and_garbage_is_refused(use_hiredis: bool) -> None:
    reader = FrameReader(use_hiredis=use_hiredis)
    reader.feed(b"-ERR no\r\n+OK\r\n")
    error, ok = reader.frames()
    assert isinstance(error, redis.exceptions.ResponseError) and "no" in str(error)
    assert ok in (b"OK", "OK")
    reader = FrameReader(use_hiredis=use_hiredis)
    reader.feed(b"?what\r\n")
    with pytest.raises(ProtocolError):
        reader.frames()


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_socket_source_reads_a_real_subscription(redis_url: str, protocol: int) -> None:
    client = redis.Redis.from_url(redis_url, protocol=protocol)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe("frames:test")
        source = SocketSource.of(pubsub, 0.05)
        assert source is not None
        message = None
        for _ in range(100):  # each call waits at most 50 ms
            message = source.next()
            if message is not None:
                break
        assert message is not None and message["type"] == "subscribe"
        for i in range(50):
            client.publish("frames:test", b"m%d" % i)
        got = []
        while len(got) < 50:
            message = source.next()
            if message is not None:
                got.append(message["data"])
        assert got == [b"m%d" % i for i in range(50)]
        pubsub.ping()
        pong = None
        while pong is None:
            pong = source.next()
        assert pong["type"] == "pong"
    finally:
        pubsub.close()
        client.close()


def test_a_closed_connection_is_a_connection_error(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe("frames:kill")
        source = SocketSource.of(pubsub, 0.05)
        assert source is not None
        host, port = pubsub.connection._sock.getsockname()[:2]
        assert client.client_kill_filter(_type=None, addr=f"{host}:{port}") == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            for _ in range(200):
                source.next()
    finally:
        pubsub.close()
        client.close()


@pytest.mark.parametrize("use_hiredis", PARSERS)
def test_fed_one_byte_at_a_time_from_a_reused_buffer(use_hiredis: bool) -> None:
    # What the direct path does: each read lands in the same buffer, and its first bytes are
    # fed; nothing is pending once every frame came out.
    pieces = [
        b"*3\r\n*2\r\n$1\r\na\r\n$-1\r\n*0\r\n*-1\r\n",
        b"+OK\r\n",
        b"-WRONGTYPE Operation against a key\r\n",
        b":-7\r\n",
        b"$0\r\n\r\n",
    ]
    data = b"".join(pieces)
    ends = {sum(len(piece) for piece in pieces[: i + 1]) for i in range(len(pieces))}
    reader = FrameReader(use_hiredis=use_hiredis)
    buffer = bytearray(4)
    received: list[t.Any] = []
    for at in range(len(data)):
        buffer[0] = data[at]
        reader.feed_from(buffer, 1)
        received.extend(reader.frames())
        if at + 1 in ends:
            assert not reader.pending
        elif not use_hiredis:  # hiredis does not tell of an array it has begun
            assert reader.pending
    error = received[2]
    assert isinstance(error, redis.exceptions.ResponseError)
    assert str(error) == "WRONGTYPE Operation against a key"
    assert received[:2] + received[3:] == [[[b"a", None], [], None], b"OK", -7, b""]
