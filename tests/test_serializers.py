"""Serializers and the envelope: every failure is a typed error, every header is checked."""

from __future__ import annotations

import math
import struct
import typing as t

import pytest

from tieredcache import CompressedSerializer
from tieredcache import DeserializationError
from tieredcache import Entry
from tieredcache import EntryCodec
from tieredcache import JSONSerializer
from tieredcache import MemoryBackend
from tieredcache import PickleSerializer
from tieredcache import SerializationError
from tieredcache import Serializer
from tieredcache import SignedSerializer
from tieredcache import envelope


class Exploding:
    def __reduce__(self) -> t.Any:
        raise RuntimeError("refuses")


class ExplodingMapping(dict):  # type: ignore[type-arg]
    def items(self) -> t.Any:  # what the JSON encoder asks a dict subclass for
        raise RuntimeError("refuses")


class RaisingSerializer(Serializer):
    """A serializer of a user's own that raises whatever it likes."""

    def dumps(self, value: t.Any) -> bytes:
        raise RuntimeError("dumps failed")

    def loads(self, data: bytes) -> t.Any:
        raise KeyError("loads failed")


SERIALIZERS: dict[str, t.Callable[[], Serializer]] = {
    "pickle": PickleSerializer,
    "json": JSONSerializer,
    "signed": lambda: SignedSerializer("secret"),
    "zlib": lambda: CompressedSerializer(threshold=0),
    "signed-zlib": lambda: SignedSerializer("secret", CompressedSerializer(threshold=0)),
    "zlib-signed": lambda: CompressedSerializer(SignedSerializer("secret"), threshold=0),
    "signed-json": lambda: SignedSerializer("secret", JSONSerializer()),
}


@pytest.mark.parametrize("name", list(SERIALIZERS))
def test_any_exception_from_dumps_is_a_serialization_error(name: str) -> None:
    serializer = SERIALIZERS[name]()
    bad = ExplodingMapping(a=1) if "json" in name else Exploding()
    with pytest.raises(SerializationError) as info:
        serializer.dumps(bad)
    assert not isinstance(info.value, DeserializationError)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(SerializationError) as info:
        EntryCodec(serializer).encode(Entry(bad, None, 1))
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("name", list(SERIALIZERS))
@pytest.mark.parametrize("data", [b"", b"\x00", b"\x01garbage", b"\xff" * 40, b"[1,"])
def test_any_failure_of_loads_is_a_deserialization_error(name: str, data: bytes) -> None:
    serializer = SERIALIZERS[name]()
    with pytest.raises(DeserializationError):
        serializer.loads(data)
    with pytest.raises(DeserializationError):
        EntryCodec(serializer).decode(EntryCodec.header(None, None, 1) + data)


def test_a_users_serializer_that_raises_anything_is_mapped() -> None:
    codec = EntryCodec(RaisingSerializer())
    with pytest.raises(SerializationError) as info:
        codec.encode(Entry("v", None, 1))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(DeserializationError) as info2:
        codec.decode(EntryCodec.header(None, None, 1) + b"payload")
    assert isinstance(info2.value.__cause__, KeyError)
    memory = MemoryBackend(serializer=RaisingSerializer())
    with pytest.raises(SerializationError):
        memory.set("k", "v")
    assert memory.get("k") is None
    with memory._lock:
        memory._data["k"] = Entry(b"payload")
        memory._order["k"] = 1
    assert memory.get("k") is None
    assert memory.stats()["corrupt"] == 1


@pytest.mark.parametrize("name", list(SERIALIZERS))
def test_signed_envelopes_verify_their_header(name: str) -> None:
    serializer = SERIALIZERS[name]()
    codec = EntryCodec(serializer)
    data = codec.encode(Entry({"a": 1}, 1000.0, 5, 900.0))
    assert codec.decode(data) == Entry({"a": 1}, 1000.0, 5, 900.0)
    edited = data[:4] + struct.pack(">d", 10**12) + data[12:]
    if serializer.signs:
        with pytest.raises(DeserializationError):
            codec.decode(edited)
    else:
        assert codec.decode(edited).expires_at == 10**12
    retimed = codec.retime(data, 2000.0)
    assert codec.decode(retimed) == Entry({"a": 1}, 2000.0, 5, 900.0)
    if serializer.signs:
        with pytest.raises(DeserializationError):
            codec.retime(edited, 2000.0)  # a forged header is never signed again


def test_rotated_secrets_verify_and_sign_with_the_newest() -> None:
    old = EntryCodec(SignedSerializer("old"))
    rotated = EntryCodec(SignedSerializer("new", fallbacks=["old"]))
    new_only = EntryCodec(SignedSerializer("new"))
    data = old.encode(Entry("v", None, 1))
    assert rotated.decode(data).value == "v"
    with pytest.raises(DeserializationError):
        new_only.decode(data)
    assert new_only.decode(rotated.retime(data, 50.0)) == Entry("v", 50.0, 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_header_times_are_corrupt(bad: float) -> None:
    codec = EntryCodec()
    for header in (EntryCodec.header(bad, None, 1), EntryCodec.header(1000.0, bad, 1)):
        with pytest.raises(DeserializationError):
            codec.decode(header + PickleSerializer().dumps("v"))
        with pytest.raises(DeserializationError):
            EntryCodec.read_header(header)
    # A time behind a cleared flag is not read, so it cannot be corrupt.
    assert codec.decode(
        EntryCodec.header(None, None, 1)[:4]
        + struct.pack(">d", bad)
        + (EntryCodec.header(None, None, 1)[12:])
        + PickleSerializer().dumps("v")
    ) == Entry("v", None, 1)


def test_the_envelope_offsets_locate_the_header_fields() -> None:
    data = envelope.header(12.5, 10.25, -7, tagged=True)
    assert len(data) == envelope.HEADER_SIZE == EntryCodec.header_size
    assert data.startswith(envelope.MAGIC_FORMAT)
    assert data[envelope.FLAGS_OFFSET] == (
        envelope.HAS_EXPIRES | envelope.HAS_STALE | envelope.HAS_TAGS
    )
    time = envelope.TIME_FORMAT
    assert struct.unpack_from(time, data, envelope.EXPIRES_OFFSET) == (12.5,)
    assert struct.unpack_from(time, data, envelope.STALE_OFFSET) == (10.25,)
    assert struct.unpack_from(">q", data, envelope.VERSION_OFFSET) == (-7,)
    assert envelope.read_header(data) == EntryCodec.read_header(data) == (12.5, 10.25, -7)
