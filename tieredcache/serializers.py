"""Serializers, and the envelope that remote stores keep.

A serializer turns a value into bytes and back. :class:`PickleSerializer` is the default;
:class:`JSONSerializer` keeps payloads readable by other languages; :class:`SignedSerializer`
adds an HMAC-SHA256 so that whoever can write to a shared store cannot make every process
unpickle their bytes; :class:`CompressedSerializer` compresses large payloads with zlib.

Remote backends store an *envelope*: a fixed binary header carrying the entry's
``expires_at``, ``stale_at`` and ``version`` exactly, followed by the serialized payload
(:class:`EntryCodec`). A signing serializer signs the header together with the payload, so a
forged or edited expiry is refused like a forged value. A payload that fails to verify or
decode, or a header whose times are not finite numbers, raises
:class:`~tieredcache.errors.DeserializationError`, which every backend reads as a miss.

Every serializer raises :class:`~tieredcache.errors.SerializationError` for any failure to
encode a value (whatever the value's own code raised, chained as the cause) and
:class:`~tieredcache.errors.DeserializationError` for any failure to decode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import struct
import typing as t
import zlib

from tieredcache import envelope
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

    #: True when the serializer authenticates what it encodes (and the envelope header it is
    #: given): a store must then not edit a header without re-signing it (:meth:`rebind`).
    signs: bool = False

    def dumps_with_header(self, value: t.Any, header: bytes) -> bytes:
        """Encode ``value`` as the payload of an envelope whose header is ``header``.

        A signing serializer authenticates ``header`` with the payload; others ignore it.

        :raises SerializationError: the value cannot be encoded.
        """
        return self.dumps(value)

    def loads_with_header(self, data: bytes, header: bytes) -> t.Any:
        """Decode a payload made by :meth:`dumps_with_header` with this ``header``.

        :raises DeserializationError: the payload or the header does not verify, or the
            payload cannot be decoded.
        """
        return self.loads(data)

    def rebind(self, data: bytes, header: bytes, new_header: bytes) -> bytes:
        """The payload ``data``, verified against ``header``, made valid under ``new_header``
        (an envelope whose expiry changes). Unsigned payloads are returned as they are.

        :raises DeserializationError: the payload does not verify against ``header``.
        """
        return bytes(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _encode_failure(serializer: str, value: t.Any, exc: Exception) -> SerializationError:
    """A failure of the value's own code while encoding, as a ``SerializationError``."""
    kind = type(value).__name__
    return SerializationError(f"cannot encode {kind} with {serializer}: {exc!r}")


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
        except Exception as exc:  # __reduce__ and __getstate__ may raise anything
            raise _encode_failure("pickle", value, exc) from exc

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
        except Exception as exc:  # a subclass's __str__, __iter__... may raise anything
            raise _encode_failure("JSON", value, exc) from exc

    def loads(self, data: bytes) -> t.Any:
        try:
            return json.loads(data)
        except Exception as exc:
            raise DeserializationError(f"cannot decode JSON payload: {exc!r}") from exc


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
    Inside an envelope the signature also covers the envelope header (the expiry, stale
    time and version), so nobody without the secret can make an entry live longer, or
    expired sooner, by editing it. The key is not covered: whoever can write to the store
    can still copy one signed envelope to another key.

    :param secret: the signing secret (str or bytes).
    :param inner: the serializer whose output is signed.
    :param fallbacks: older secrets still accepted on read, for rotation.
    :param salt: a namespace for the derived key; change it to separate applications.
    """

    name = "signed"
    signs = True
    _MAC_SIZE = 32
    # Names what the MAC covers, so a MAC made for one layout never verifies for another.
    _DOMAIN = b"tieredcache.signed.v2\x00"

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

    def _mac(self, key: bytes, header: bytes, body: bytes) -> bytes:
        mac = hmac.new(key, self._DOMAIN, hashlib.sha256)
        mac.update(struct.pack(">I", len(header)))
        mac.update(header)
        mac.update(body)
        return mac.digest()

    def dumps(self, value: t.Any) -> bytes:
        return self.dumps_with_header(value, b"")

    def loads(self, data: bytes) -> t.Any:
        return self.loads_with_header(data, b"")

    def dumps_with_header(self, value: t.Any, header: bytes) -> bytes:
        data = self.inner.dumps_with_header(value, header)
        return self._mac(self._key, header, data) + data

    def loads_with_header(self, data: bytes, header: bytes) -> t.Any:
        return self.inner.loads_with_header(self._verified(data, header), header)

    def rebind(self, data: bytes, header: bytes, new_header: bytes) -> bytes:
        body = self.inner.rebind(self._verified(data, header), header, new_header)
        return self._mac(self._key, new_header, body) + body

    def _verified(self, data: bytes, header: bytes) -> bytes:
        """The signed body, once its signature verifies with one of the keys."""
        data = bytes(data)
        if len(data) < self._MAC_SIZE:
            raise DeserializationError("signed payload is too short")
        mac, body = data[: self._MAC_SIZE], data[self._MAC_SIZE :]
        for key in self._keys:
            if hmac.compare_digest(mac, self._mac(key, header, body)):
                return body
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
        self.signs = self.inner.signs

    def dumps(self, value: t.Any) -> bytes:
        return self.dumps_with_header(value, b"")

    def loads(self, data: bytes) -> t.Any:
        return self.loads_with_header(data, b"")

    def dumps_with_header(self, value: t.Any, header: bytes) -> bytes:
        return self._pack(self.inner.dumps_with_header(value, header))

    def loads_with_header(self, data: bytes, header: bytes) -> t.Any:
        return self.inner.loads_with_header(self._unpack(data), header)

    def rebind(self, data: bytes, header: bytes, new_header: bytes) -> bytes:
        if not self.signs:
            return bytes(data)
        return self._pack(self.inner.rebind(self._unpack(data), header, new_header))

    def _pack(self, data: bytes) -> bytes:
        if len(data) >= self.threshold:
            try:
                packed = zlib.compress(data, self.level)
            except Exception as exc:  # pragma: no cover - zlib refuses only absurd sizes
                raise SerializationError(f"cannot compress payload: {exc!r}") from exc
            if len(packed) < len(data):
                return self._ZLIB + packed
        return self._RAW + data

    def _unpack(self, data: bytes) -> bytes:
        marker, body = bytes(data[:1]), data[1:]
        if marker == self._RAW:
            return bytes(body)
        if marker == self._ZLIB:
            try:
                return zlib.decompress(body)
            except Exception as exc:
                raise DeserializationError(f"cannot decompress payload: {exc!r}") from exc
        raise DeserializationError("unknown compression marker")

    def __repr__(self) -> str:
        return f"CompressedSerializer(inner={self.inner!r}, threshold={self.threshold})"


_SIZE = envelope.HEADER_SIZE
_MAGIC_FORMAT = envelope.MAGIC_FORMAT
_FLAGS_OFFSET = envelope.FLAGS_OFFSET
_HAS_TAGS = envelope.HAS_TAGS
_unpack_fields = envelope.FIELDS.unpack_from  # the header after magic and format
_times = envelope.header_times
_EXPIRES_ONLY = envelope.HAS_EXPIRES
_loads = pickle.loads


class EntryCodec:
    """Encodes an :class:`~tieredcache.entry.Entry` as an envelope and back.

    The header (laid out in :mod:`tieredcache.envelope`) is 28 bytes: magic ``b"TC"``, a
    format byte, flags, ``expires_at`` and ``stale_at`` as IEEE doubles (present only when
    their flag is set, so "no expiry" is never confused with any time) and ``version`` as a
    signed 64-bit integer. An entry with tags sets a flag and its payload is the pair
    ``(value, tags)``, so the tags are covered by the payload's signature and survive a
    :meth:`retime`. A signing serializer signs the header with the payload. A header whose
    times are not finite numbers (NaN, infinities) is refused as corrupt. Thread-safe.

    :param serializer: the payload serializer.
    """

    header_size = envelope.HEADER_SIZE

    def __init__(self, serializer: Serializer | None = None) -> None:
        self.serializer = serializer if serializer is not None else PickleSerializer()
        # Pickle reads the payload in place: no copy of it is made on the read path.
        self._pickle = type(self.serializer) is PickleSerializer
        #: True when payloads sign their header: a header cannot be edited in place.
        self.signs = bool(self.serializer.signs)

    def encode(self, entry: Entry) -> bytes:
        """The envelope of ``entry``.

        :raises SerializationError: the value cannot be serialized.
        """
        wire = entry.wire
        if wire is not None and wire[0] is self:
            return wire[1]
        tags = entry.tags
        header = self.header(entry.expires_at, entry.stale_at, entry.version, tagged=bool(tags))
        value = (entry.value, list(tags)) if tags else entry.value
        try:
            payload = self.serializer.dumps_with_header(value, header)
        except SerializationError:
            raise
        except Exception as exc:  # a serializer of the caller's own that raised anything
            raise _encode_failure(repr(self.serializer), entry.value, exc) from exc
        return header + payload

    def encode_once(self, entry: Entry) -> bytes:
        """:meth:`encode`, keeping the envelope on ``entry`` so that a later :meth:`encode`
        of the same entry by this codec returns it without serializing again.

        :raises SerializationError: the value cannot be serialized.
        """
        data = self.encode(entry)
        entry.wire = (self, data)
        return data

    #: The envelope header alone: :func:`tieredcache.envelope.header`.
    header = staticmethod(envelope.header)
    #: An envelope's ``(expires_at, stale_at, version)``: :func:`tieredcache.envelope.read_header`.
    read_header = staticmethod(envelope.read_header)

    def decode(self, data: bytes) -> Entry:
        """The entry in an envelope.

        :raises DeserializationError: the envelope or its payload cannot be decoded.
        """
        # read_header() inlined: this runs once for every key an L2 read returns.
        try:
            usual = len(data) >= _SIZE and data.startswith(_MAGIC_FORMAT)
        except TypeError:  # not bytes (a number or text in a store of typed columns)
            usual = False
        if not usual:
            self.read_header(data)  # raises the precise error
        flags, expires_at, stale_at, version = _unpack_fields(data, _FLAGS_OFFSET)
        if flags == _EXPIRES_ONLY and expires_at - expires_at == 0.0:
            # The usual header, inlined: an expiry (finite: inf - inf and nan are not 0), no
            # stale time, no tags.
            expires, stale = expires_at, None
        else:
            expires, stale = _times(flags, expires_at, stale_at)
        if self._pickle:
            try:
                # Large payloads are read in place; copying a small one is cheaper than a view.
                value = _loads(memoryview(data)[_SIZE:] if len(data) > 1024 else data[_SIZE:])
            except Exception as exc:  # a corrupt pickle can raise almost anything
                raise DeserializationError(f"cannot unpickle payload: {exc!r}") from exc
        else:
            try:
                value = self.serializer.loads_with_header(data[_SIZE:], data[:_SIZE])
            except DeserializationError:
                raise
            except Exception as exc:  # a serializer of the caller's own that raised anything
                raise DeserializationError(f"cannot decode payload: {exc!r}") from exc
        if flags & _HAS_TAGS:
            return _tagged_entry(value, expires, version, stale)
        return Entry(value, expires, version, stale)

    def retime(self, data: bytes, expires_at: float | None) -> bytes:
        """The envelope ``data`` with a new ``expires_at`` (re-signed when payloads are
        signed; the payload is verified first, so a forged one is never re-signed).

        :raises DeserializationError: ``data`` is not a valid envelope.
        """
        _, stale_at, version = self.read_header(data)
        tagged = bool(data[_FLAGS_OFFSET] & _HAS_TAGS)
        new_header = self.header(expires_at, stale_at, version, tagged=tagged)
        if not self.signs:
            return new_header + bytes(data[_SIZE:])
        try:
            body = self.serializer.rebind(data[_SIZE:], bytes(data[:_SIZE]), new_header)
        except DeserializationError:
            raise
        except Exception as exc:
            raise DeserializationError(f"cannot re-sign payload: {exc!r}") from exc
        return new_header + body

    def __repr__(self) -> str:
        return f"EntryCodec({self.serializer!r})"


def _tagged_entry(pair: t.Any, expires: float | None, version: int, stale: float | None) -> Entry:
    """The entry of a tagged payload ``(value, tags)``."""
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not isinstance(pair[1], (tuple, list))
        or not all(isinstance(tag, str) for tag in pair[1])
    ):
        raise DeserializationError("a tagged envelope does not hold a (value, tags) pair")
    return Entry(pair[0], expires, version, stale, tuple(pair[1]))
