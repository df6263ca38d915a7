"""The envelope header that remote stores keep in front of every payload.

This module is the one definition of the layout: :class:`~tieredcache.serializers.EntryCodec`
packs and reads it, and the Redis backend builds its Lua scripts from these constants, so a
change of the layout here changes both.

The header is :data:`HEADER_SIZE` (28) bytes, big-endian: :data:`MAGIC` ``b"TC"``, the
:data:`FORMAT` byte, the flags (:data:`HAS_EXPIRES`, :data:`HAS_STALE`, :data:`HAS_TAGS`),
``expires_at`` and ``stale_at`` as IEEE doubles (meaningful only when their flag is set, so
"no expiry" is never confused with any time) and ``version`` as a signed 64-bit integer.
"""

from __future__ import annotations

import math
import struct

from tieredcache.errors import DeserializationError

__all__ = [
    "EXPIRES_OFFSET",
    "FIELDS",
    "FLAGS_OFFSET",
    "FORMAT",
    "HAS_EXPIRES",
    "HAS_STALE",
    "HAS_TAGS",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAGIC_FORMAT",
    "STALE_OFFSET",
    "TIME_FORMAT",
    "VERSION_OFFSET",
    "header",
    "header_times",
    "read_header",
]

#: The whole header: magic, format, flags, expires_at, stale_at, version.
HEADER = struct.Struct(">2sBBddq")
#: The header after :data:`MAGIC_FORMAT`: flags, expires_at, stale_at, version.
FIELDS = struct.Struct(">Bddq")
#: The struct format of one time field (``expires_at``, ``stale_at``).
TIME_FORMAT = ">d"
#: The two bytes every envelope starts with.
MAGIC = b"TC"
#: The layout's format number, the byte after :data:`MAGIC`.
FORMAT = 1
#: :data:`MAGIC` followed by the :data:`FORMAT` byte: the prefix of every envelope.
MAGIC_FORMAT = MAGIC + bytes([FORMAT])
#: The size of the header in bytes.
HEADER_SIZE = HEADER.size

#: Flag: ``expires_at`` holds the entry's expiry (clear: the entry never expires).
HAS_EXPIRES = 1
#: Flag: ``stale_at`` holds the entry's stale time.
HAS_STALE = 2
#: Flag: the payload is the pair ``(value, tags)``.
HAS_TAGS = 4

#: Byte offsets (from 0) of the header's fields.
FLAGS_OFFSET = len(MAGIC_FORMAT)
EXPIRES_OFFSET = FLAGS_OFFSET + 1
STALE_OFFSET = EXPIRES_OFFSET + struct.calcsize(TIME_FORMAT)
VERSION_OFFSET = STALE_OFFSET + struct.calcsize(TIME_FORMAT)
assert FIELDS.size + FLAGS_OFFSET == HEADER_SIZE
assert VERSION_OFFSET + 8 == HEADER_SIZE


def header(
    expires_at: float | None, stale_at: float | None, version: int, *, tagged: bool = False
) -> bytes:
    """The envelope header of an entry (``tagged``: the payload carries tags)."""
    flags = (
        (HAS_EXPIRES if expires_at is not None else 0)
        | (HAS_STALE if stale_at is not None else 0)
        | (HAS_TAGS if tagged else 0)
    )
    return HEADER.pack(
        MAGIC,
        FORMAT,
        flags,
        0.0 if expires_at is None else expires_at,
        0.0 if stale_at is None else stale_at,
        version,
    )


def read_header(data: bytes) -> tuple[float | None, float | None, int]:
    """``(expires_at, stale_at, version)`` from an envelope, without decoding the payload.

    :raises DeserializationError: the bytes are not an envelope, or its times are not finite
        numbers.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        # A store of typed columns (SQLite) can hold a number or text another program wrote.
        raise DeserializationError(f"payload is {type(data).__name__}, not bytes")
    if len(data) < HEADER_SIZE:
        raise DeserializationError("payload is shorter than the envelope header")
    magic, fmt, flags, expires_at, stale_at, version = HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT:
        raise DeserializationError("payload is not a tieredcache envelope")
    return (*header_times(flags, expires_at, stale_at), version)


def header_times(
    flags: int, expires_at: float, stale_at: float
) -> tuple[float | None, float | None]:
    """The header's ``(expires_at, stale_at)``, ``None`` where the flag is clear.

    :raises DeserializationError: a time whose flag is set is not a finite number.
    """
    expires = expires_at if flags & HAS_EXPIRES else None
    stale = stale_at if flags & HAS_STALE else None
    if (expires is not None and not math.isfinite(expires)) or (
        stale is not None and not math.isfinite(stale)
    ):
        raise DeserializationError(
            f"envelope header holds a time that is not a finite number "
            f"(expires_at={expires!r}, stale_at={stale!r})"
        )
    return expires, stale
