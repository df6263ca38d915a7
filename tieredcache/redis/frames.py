"""Reading pub/sub frames straight from a subscriber's socket.

A subscriber connection receives nothing but pushed frames (RESP2 arrays or RESP3 pushes:
``message``, ``subscribe``, ``pong`` ...) and simple replies. :class:`FrameReader` turns
the bytes read from the socket into those frames, many per ``recv`` when messages come in
bursts, with ``hiredis`` when it is installed and with a small parser of its own
otherwise; the subscriber loop of :mod:`tieredcache.redis.pubsub` reads with it instead of
one driver call per message. The direct protocol path (:mod:`tieredcache.redis.direct`)
parses the replies to its commands with it too.
"""

from __future__ import annotations

import importlib
import typing as t

import redis.exceptions

hiredis: t.Any
try:  # optional: the C parser, when installed (the ``hiredis`` extra)
    hiredis = importlib.import_module("hiredis")
except ImportError:  # pragma: no cover - depends on the environment
    hiredis = None

__all__ = ["FrameReader", "ProtocolError"]

Frame = t.Any  # a list of bytes and ints, an int, bytes, or an error


class ProtocolError(redis.exceptions.ConnectionError):
    """The bytes on a subscriber connection are not RESP frames."""


class FrameReader:
    """Incremental RESP parser (the RESP2 types, and RESP3 pushes and nulls): :meth:`feed`
    bytes, then :meth:`frames` for what is complete.

    Error replies are returned as :class:`redis.exceptions.ResponseError` objects.
    """

    def __init__(self, *, use_hiredis: bool = True) -> None:
        self._reader: t.Any = None
        if use_hiredis and hiredis is not None:
            self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket."""
        if self._reader is not None:
            self._reader.feed(data)
        else:
            self._buffer += data

    def feed_from(self, buffer: bytearray, length: int) -> None:
        """Add the first ``length`` bytes of ``buffer`` (a receive buffer used again for the
        next read: they are copied, once)."""
        if self._reader is not None:
            self._reader.feed(buffer, 0, length)
        else:
            self._buffer += memoryview(buffer)[:length]

    @property
    def pending(self) -> bool:
        """Whether bytes of a frame not yet complete are held."""
        if self._reader is not None:
            return bool(self._reader.has_data())
        return bool(self._buffer)

    def frames(self) -> list[Frame]:
        """Every complete frame fed so far, in order.

        :raises ProtocolError: the bytes are not RESP.
        """
        out: list[Frame] = []
        if self._reader is not None:
            try:
                while True:
                    frame = self._reader.gets()
                    if frame is False:
                        return out
                    out.append(frame)
            except hiredis.ProtocolError as exc:
                raise ProtocolError(str(exc)) from exc
        buffer = self._buffer
        at = 0
        while True:
            parsed = _parse(buffer, at)
            if parsed is None:
                break
            frame, at = parsed
            out.append(frame)
        if at:
            del buffer[:at]
        return out


def _line(buffer: bytearray, at: int) -> tuple[bytes, int] | None:
    end = buffer.find(b"\r\n", at)
    if end < 0:
        return None
    return bytes(buffer[at:end]), end + 2


def _parse(buffer: bytearray, at: int) -> tuple[Frame, int] | None:
    """One frame from ``buffer`` at ``at``: ``(frame, next index)``, or ``None`` if incomplete."""
    line = _line(buffer, at)
    if line is None:
        return None
    head, at = line
    if not head:
        raise ProtocolError("empty RESP line")
    kind, rest = head[:1], head[1:]
    try:
        if kind == b"+":
            return rest, at
        if kind == b"-":
            return redis.exceptions.ResponseError(rest.decode("utf-8", "replace")), at
        if kind == b":":
            return int(rest), at
        if kind == b"_":
            return None, at
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None, at
            if len(buffer) < at + size + 2:
                return None
            return bytes(buffer[at : at + size]), at + size + 2
        if kind in (b"*", b">"):
            count = int(rest)
            if count < 0:
                return None, at
            items: list[Frame] = []
            for _ in range(count):
                parsed = _parse(buffer, at)
                if parsed is None:
                    return None
                item, at = parsed
                items.append(item)
            return items, at
    except ValueError as exc:
        raise ProtocolError(f"bad RESP header {head!r}") from exc
    raise ProtocolError(f"unexpected RESP type {kind!r}")
