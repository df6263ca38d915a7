"""Serializers, and the envelope that remote stores keep.

A serializer turns a value into bytes and back. :class:`PickleSerializer` is the default;
:class:`JSONSerializer` keeps payloads readable by other languages; :class:`SignedSerializer`
adds an HMAC-SHA256 so that whoever can write to a shared store cannot make every process
unpickle their bytes; :class:`CompressedSerializer` compresses large payloads with zlib.

Remote backends store an *envelope*: a fixed binary header carrying the entry's
``expires_at``, ``stale_at`` and ``version`` exactly, followed by the serialized payload
(:class:`EntryCodec`). A payload that fails to verify or decode raises
:class:`~tieredcache.errors.DeserializationError`, which every backend reads as a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
import typing as t
import zlib

from tieredcache.entry import Entry
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.errors import SerializationError

__all__ = [
    "CompressedSerializer",
    "EntryCodec",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "SignedSerializer",
]


class Serializer:
    """Turns values into bytes and back.

    Subclasses implement :meth:`dumps` and :meth:`loads`. Serializers hold no mutable state
    and are thread-safe.
    """

    name: t.ClassVar[str] = "serializer"

    def dumps(self, value: t.Any) -> bytes:
        """Encode ``value``.

        :raises SerializationError: the value cannot be encoded.
        """
        raise NotImplementedError  # pragma: no cover

    def loads(self, data: bytes) -> t.Any:
        """Decode bytes made by :meth:`dumps`.

        :raises DeserializationError: the bytes cannot be verified or decoded.
        """
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PickleSerializer(Serializer):
    """Pickle at the highest protocol (or the one given); the default serializer.

    :param protocol: the pickle protocol.
    """

    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, value: t.Any) -> bytes:
        try:
            return pickle.dumps(value, self.protocol)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError, ValueError) as exc:
            raise SerializationError(f"cannot pickle {type(value).__name__}: {exc}") from exc

    def loads(self, data: bytes) -> t.Any:
        try:
            return pickle.loads(data)
        except Exception as exc:  # a corrupt pickle can raise almost anything
            raise DeserializationError(f"cannot unpickle payload: {exc!r}") from exc


class JSONSerializer(Serializer):
    """JSON, UTF-8 encoded.

    Only JSON types round-trip: tuples come back as lists and dict keys as strings.
    """

    name = "json"

    def dumps(self, value: t.Any) -> bytes:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            kind = type(value).__name__
            raise SerializationError(f"cannot encode {kind} as JSON: {exc}") from exc

    def loads(self, data: bytes) -> t.Any:
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise DeserializationError(f"cannot decode JSON payload: {exc}") from exc


def _key_from_secret(secret: str | bytes, salt: bytes) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise ConfigurationError("a signing secret must be a non-empty str or bytes")
    return hmac.new(salt, secret, hashlib.sha256).digest()


class SignedSerializer(Serializer):
    """Signs the inner serializer's bytes with HMAC-SHA256 and verifies them on read.

    A payload whose signature matches none of the secrets is refused before the inner
    serializer sees it, so a shared store cannot feed forged pickles into every process.
    The signature covers the payload only: whoever can write to the store can still copy
    one signed payload to another key.

    :param secret: the signing secret (str or bytes).
    :param inner: the serializer whose output is signed.
    :param fallbacks: older secrets still accepted on read, for rotation.
    :param salt: a namespace for the derived key; change it to separate applications.
    """

    name = "signed"
    _MAC_SIZE = 32

    def __init__(
        self,
        secret: str | bytes,
        inner: Serializer | None = None,
        *,
        fallbacks: t.Iterable[str | bytes] = (),
        salt: bytes = b"tieredcache.signed",
    ) -> None:
        self.inner = inner if inner is not None else PickleSerializer()
        self._key = _key_from_secret(secret, salt)
        self._keys = (self._key, *(_key_from_secret(s, salt) for s in fallbacks))

    def _mac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    def dumps(self, value: t.Any) -> bytes:
        data = self.inner.dumps(value)
        return self._mac(self._key, data) + data

    def loads(self, data: bytes) -> t.Any:
        data = bytes(data)
        if len(data) < self._MAC_SIZE:
            raise DeserializationError("signed payload is too short")
        mac, body = data[: self._MAC_SIZE], data[self._MAC_SIZE :]
        for key in self._keys:
            if hmac.compare_digest(mac, self._mac(key, body)):
                return self.inner.loads(body)
        raise DeserializationError("payload signature does not verify")

    def __repr__(self) -> str:
        return f"SignedSerializer(inner={self.inner!r}, secrets={len(self._keys)})"


class CompressedSerializer(Serializer):
    """Compresses the inner serializer's bytes with zlib when they exceed ``threshold``.

    :param inner: the serializer whose output is compressed.
    :param threshold: payloads of at least this many bytes are compressed.
    :param level: the zlib level, 0 to 9.
    """

    name = "zlib"
    _RAW = b"\x00"
    _ZLIB = b"\x01"

    def __init__(
        self, inner: Serializer | None = None, *, threshold: int = 1024, level: int = 6
    ) -> None:
        if threshold < 0 or not 0 <= level <= 9:
            raise ConfigurationError("threshold must be >= 0 and level between 0 and 9")
        self.inner = inner if inner is not None else PickleSerializer()
        self.threshold = threshold
        self.level = level

    def dumps(self, value: t.Any) -> bytes:
        data = self.inner.dumps(value)
        if len(data) >= self.threshold:
            packed = zlib.compress(data, self.level)
            if len(packed) < len(data):
                return self._ZLIB + packed
        return self._RAW + data

    def loads(self, data: bytes) -> t.Any:
        marker, body = bytes(data[:1]), data[1:]
        if marker == self._RAW:
            return self.inner.loads(body)
        if marker == self._ZLIB:
            try:
                raw = zlib.decompress(body)
            except zlib.error as exc:
                raise DeserializationError(f"cannot decompress payload: {exc}") from exc
            return self.inner.loads(raw)
        raise DeserializationError("unknown compression marker")

    def __repr__(self) -> str:
        return f"CompressedSerializer(inner={self.inner!r}, threshold={self.threshold})"


# magic, format version, flags, expires_at, stale_at, version
_HEADER = struct.Struct(">2sBBddq")
_MAGIC = b"TC"
_FORMAT = 1
_MAGIC_FORMAT = b"TC\x01"
_SIZE = _HEADER.size
_unpack_after_magic = struct.Struct(">Bddq").unpack_from  # the header after magic and format
_loads = pickle.loads
_HAS_EXPIRES = 1
_HAS_STALE = 2


class EntryCodec:
    """Encodes an :class:`~tieredcache.entry.Entry` as an envelope and back.

    The header is 28 bytes: magic ``b"TC"``, a format byte, flags, ``expires_at`` and
    ``stale_at`` as IEEE doubles (present only when their flag is set, so "no expiry" is
    never confused with any time) and ``version`` as a signed 64-bit integer. Thread-safe.

    :param serializer: the payload serializer.
    """

    header_size = _HEADER.size

    def __init__(self, serializer: Serializer | None = None) -> None:
        self.serializer = serializer if serializer is not None else PickleSerializer()
        # Pickle reads the payload in place: no copy of it is made on the read path.
        self._pickle = type(self.serializer) is PickleSerializer

    def encode(self, entry: Entry) -> bytes:
        """The envelope of ``entry``.

        :raises SerializationError: the value cannot be serialized.
        """
        payload = self.serializer.dumps(entry.value)
        return self.header(entry.expires_at, entry.stale_at, entry.version) + payload

    @staticmethod
    def header(expires_at: float | None, stale_at: float | None, version: int) -> bytes:
        """The envelope header alone."""
        flags = (_HAS_EXPIRES if expires_at is not None else 0) | (
            _HAS_STALE if stale_at is not None else 0
        )
        return _HEADER.pack(
            _MAGIC,
            _FORMAT,
            flags,
            0.0 if expires_at is None else expires_at,
            0.0 if stale_at is None else stale_at,
            version,
        )

    @staticmethod
    def read_header(data: bytes) -> tuple[float | None, float | None, int]:
        """``(expires_at, stale_at, version)`` from an envelope, without decoding the payload.

        :raises DeserializationError: the bytes are not an envelope.
        """
        if len(data) < _HEADER.size:
            raise DeserializationError("payload is shorter than the envelope header")
        magic, fmt, flags, expires_at, stale_at, version = _HEADER.unpack_from(data)
        if magic != _MAGIC or fmt != _FORMAT:
            raise DeserializationError("payload is not a tieredcache envelope")
        return (
            expires_at if flags & _HAS_EXPIRES else None,
            stale_at if flags & _HAS_STALE else None,
            version,
        )

    def decode(self, data: bytes) -> Entry:
        """The entry in an envelope.

        :raises DeserializationError: the envelope or its payload cannot be decoded.
        """
        # read_header() inlined: this runs once for every key an L2 read returns.
        if len(data) < _SIZE or not data.startswith(_MAGIC_FORMAT):
            self.read_header(data)  # raises the precise error
        flags, expires_at, stale_at, version = _unpack_after_magic(data, 3)
        if self._pickle:
            try:
                # Large payloads are read in place; copying a small one is cheaper than a view.
                value = _loads(memoryview(data)[_SIZE:] if len(data) > 1024 else data[_SIZE:])
            except Exception as exc:  # a corrupt pickle can raise almost anything
                raise DeserializationError(f"cannot unpickle payload: {exc!r}") from exc
        else:
            value = self.serializer.loads(data[_SIZE:])
        return Entry(
            value,
            expires_at if flags & _HAS_EXPIRES else None,
            version,
            stale_at if flags & _HAS_STALE else None,
        )

    def __repr__(self) -> str:
        return f"EntryCodec({self.serializer!r})"
