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

__all__ = ["FrameReader", "ProtocolError", "hiredis_pack_command"]

#: ``hiredis.pack_command`` (a command's arguments, packed as RESP in C) when hiredis is
#: installed, else ``None``.
hiredis_pack_command: t.Callable[[tuple[bytes, ...]], bytes] | None = getattr(
    hiredis, "pack_command", None
)

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
        #: Arrays being read, outermost first: the items so far and how many are missing.
        self._arrays: list[tuple[list[Frame], int]] = []

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
        """Whether bytes fed are held that no frame returned so far took. ``hiredis`` tells
        only of bytes it has not parsed yet, not of an array whose header it has parsed, so
        with it a frame begun is not always seen; at a frame's end this is ``False``."""
        if self._reader is not None:
            return bool(self._reader.has_data())
        return bool(self._buffer) or bool(self._arrays)

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
        at = self._parse_into(out)
        if at:
            del buffer[:at]  # cheap at the front of a bytearray
        return out

    def _parse_into(self, out: list[Frame]) -> int:
        """Append the frames complete in the buffer to ``out``; return how many bytes they
        took. An array in progress is kept with the items it has (``self._arrays``), so a
        long reply cut into many reads is parsed once, not again from its start."""
        buffer = self._buffer
        arrays = self._arrays
        size = len(buffer)
        at = 0
        while True:
            end = buffer.find(b"\r\n", at)
            if end < 0:
                return at
            if end == at:
                raise ProtocolError("empty RESP line")
            kind = buffer[at]
            try:
                if kind == 36:  # $ bulk string
                    length = int(buffer[at + 1 : end])
                    if length < 0:
                        frame: Frame = None
                        at = end + 2
                    elif size < end + length + 4:
                        return at  # the header is read again with the rest
                    else:
                        frame = bytes(buffer[end + 2 : end + 2 + length])
                        at = end + length + 4
                elif kind == 42 or kind == 62:  # * array, > push
                    count = int(buffer[at + 1 : end])
                    at = end + 2
                    if count > 0:
                        arrays.append(([], count))
                        continue
                    frame = None if count < 0 else []
                elif kind == 43:  # + simple string
                    frame = bytes(buffer[at + 1 : end])
                    at = end + 2
                elif kind == 58:  # : integer
                    frame = int(buffer[at + 1 : end])
                    at = end + 2
                elif kind == 45:  # - error
                    message = buffer[at + 1 : end].decode("utf-8", "replace")
                    frame = redis.exceptions.ResponseError(message)
                    at = end + 2
                elif kind == 95:  # _ null
                    frame = None
                    at = end + 2
                else:
                    raise ProtocolError(f"unexpected RESP type {bytes(buffer[at : at + 1])!r}")
            except ValueError as exc:
                raise ProtocolError(f"bad RESP header {bytes(buffer[at:end])!r}") from exc
            while arrays:  # the frame is an item of the innermost array in progress
                items, missing = arrays[-1]
                items.append(frame)
                if missing > 1:
                    arrays[-1] = (items, missing - 1)
                    break
                arrays.pop()
                frame = items
            else:
                out.append(frame)
