"""The payload part of the backend contract: serialization failures, signed and corrupt
payloads, and the envelope header. :class:`~tieredcache.testing.contract.BackendContract`
includes it; see :mod:`tieredcache.testing.contract` for how to use the suite.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
import struct
import threading
import typing as t

import pytest

from tieredcache.backends.base import Backend
from tieredcache.entry import Entry
from tieredcache.errors import SerializationError
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import SignedSerializer
from tieredcache.testing.clock import FakeClock

__all__ = ["PayloadContract"]


class _RefusesToSerialize:
    """A value whose own serialization code fails with an arbitrary exception."""

    def __reduce__(self) -> t.Any:
        raise RuntimeError("this value refuses to be serialized")

    def __iter__(self) -> t.Iterator[t.Any]:
        raise RuntimeError("this value refuses to be serialized")


class PayloadContract:
    """What every backend promises about the bytes it stores (a part of
    :class:`~tieredcache.testing.contract.BackendContract`; needs its ``make_backend``,
    ``backend`` and ``clock`` fixtures)."""

    #: Backends from one factory share a store (remote stores, SQLite files).
    shared_store: t.ClassVar[bool] = True
    #: The store keeps :class:`~tieredcache.serializers.EntryCodec` envelopes (remote stores).
    envelopes: t.ClassVar[bool] = True

    def write_raw(self, backend: Backend, key: str, data: bytes) -> None:
        """Store ``data`` as the raw stored bytes of ``key``, bypassing the codec."""
        pytest.skip(f"{type(backend).__name__} offers no raw write to the contract suite")

    # -- serialization ------------------------------------------------------------------

    def test_unserializable_value_writes_nothing(self, backend: Backend) -> None:
        backend.set("k", "kept")
        with pytest.raises(SerializationError):
            backend.set("k", threading.Lock())
        with pytest.raises(SerializationError):
            backend.set_many({"k": lambda: None, "k2": 1})
        assert backend.get("k") == "kept"
        assert backend.get("k2") is None

    def test_value_whose_reduce_raises_is_a_serialization_error(self, backend: Backend) -> None:
        if getattr(backend, "serializer", None) is None:
            pytest.skip("the store keeps objects without serializing them")
        backend.set("k", "kept")
        with pytest.raises(SerializationError) as info:
            backend.set("k", _RefusesToSerialize())
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(SerializationError):
            backend.set_many({"k": _RefusesToSerialize(), "k2": 1})
        with pytest.raises(SerializationError):
            backend.add("k3", _RefusesToSerialize())
        assert backend.get("k") == "kept"
        assert backend.get_many(["k2", "k3"]) == {}

    def test_forged_payload_is_a_counted_miss(self, make_backend: t.Callable[..., Backend]) -> None:
        if not self.shared_store:
            pytest.skip("backends from one factory do not share a store")
        writer = make_backend(serializer=SignedSerializer("attacker"))
        reader = make_backend(serializer=SignedSerializer("the real secret"))
        writer.set("k", "forged")
        assert reader.get("k") is None
        assert reader.stats()["corrupt"] == 1
        reader.set("k", "genuine")
        assert reader.get("k") == "genuine"

    def test_rotated_secret_still_reads(self, make_backend: t.Callable[..., Backend]) -> None:
        if not self.shared_store:
            pytest.skip("backends from one factory do not share a store")
        old = make_backend(serializer=SignedSerializer("old"))
        new = make_backend(serializer=SignedSerializer("new", fallbacks=["old"]))
        old.set("k", "written with the old secret")
        assert new.get("k") == "written with the old secret"

    @pytest.mark.parametrize(
        "data",
        [b"", b"garbage", b"TC\x01" + b"\x00" * 10, pickle.dumps("no envelope")],
        ids=["empty", "garbage", "short-header", "bare-pickle"],
    )
    def test_corrupt_payload_is_a_counted_miss(self, backend: Backend, data: bytes) -> None:
        self.write_raw(backend, "k", data)
        assert backend.get("k") is None
        assert backend.get_many(["k"]) == {}
        assert backend.stats()["corrupt"] >= 1
        backend.set("k", "fine")
        assert backend.get("k") == "fine"

    # -- envelope headers ---------------------------------------------------------------

    def _envelope_backend(
        self, make_backend: t.Callable[..., Backend], clock: FakeClock, **options: t.Any
    ) -> Backend:
        if not self.envelopes:
            pytest.skip("the store keeps no envelope header")
        return make_backend(timer=clock, **options)

    @pytest.mark.parametrize("edit", ["clear-expiry-flag", "later-expiry", "new-version"])
    def test_signature_covers_the_envelope_header(
        self, make_backend: t.Callable[..., Backend], clock: FakeClock, edit: str
    ) -> None:
        signer = SignedSerializer("secret")
        backend = self._envelope_backend(make_backend, clock, serializer=signer)
        data = EntryCodec(signer).encode(Entry("value", clock() + 10, 7))
        self.write_raw(backend, "k", data)
        assert backend.get("k") == "value"  # the untouched envelope verifies
        header = bytearray(data[: EntryCodec.header_size])
        if edit == "clear-expiry-flag":  # "never expires" instead of in ten seconds
            header[3] &= ~1
        elif edit == "later-expiry":
            header[4:12] = struct.pack(">d", clock() + 10**6)
        else:
            header[20:28] = struct.pack(">q", 8)
        self.write_raw(backend, "k", bytes(header) + data[EntryCodec.header_size :])
        before = backend.stats()["corrupt"]
        assert backend.get("k") is None
        assert backend.get_entry("k") is None
        assert backend.get_many(["k", "other"]) == {}
        assert backend.get_entries(["k"]) == {}
        assert not backend.has("k")
        assert backend.stats()["corrupt"] >= before + 5
        assert not backend.touch("k", 100)

    def test_payload_signed_without_its_header_is_a_miss(
        self, make_backend: t.Callable[..., Backend], clock: FakeClock
    ) -> None:
        # The format of earlier releases: the MAC covered the payload only.
        backend = self._envelope_backend(make_backend, clock, serializer=SignedSerializer("secret"))
        key = hmac.new(b"tieredcache.signed", b"secret", hashlib.sha256).digest()
        body = pickle.dumps("old format")
        payload = hmac.new(key, body, hashlib.sha256).digest() + body
        self.write_raw(backend, "k", EntryCodec.header(None, None, 1) + payload)
        assert backend.get("k") is None
        assert backend.stats()["corrupt"] == 1
        assert backend.add("k", "new")
        assert backend.get("k") == "new"

    def test_touch_signs_the_new_header(
        self, make_backend: t.Callable[..., Backend], clock: FakeClock
    ) -> None:
        if not self.shared_store:
            pytest.skip("backends from one factory do not share a store")
        old = self._envelope_backend(make_backend, clock, serializer=SignedSerializer("old"))
        rotated = make_backend(timer=clock, serializer=SignedSerializer("new", fallbacks=["old"]))
        new_only = make_backend(timer=clock, serializer=SignedSerializer("new"))
        old.set("k", "v", ttl=10)
        assert new_only.get("k") is None
        assert rotated.touch("k", 100)  # verified with the old secret, signed with the new
        clock.advance(50)
        entry = new_only.get_entry("k")
        assert entry is not None and entry.value == "v"
        assert entry.expires_at == pytest.approx(clock() + 50)
        assert rotated.touch("k", None)
        clock.advance(10**6)
        assert new_only.get("k") == "v"

    @pytest.mark.parametrize("where", ["expires_at", "stale_at"])
    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
    def test_non_finite_header_time_is_a_counted_miss_everywhere(
        self, make_backend: t.Callable[..., Backend], clock: FakeClock, where: str, bad: float
    ) -> None:
        backend = self._envelope_backend(make_backend, clock)
        expires_at = bad if where == "expires_at" else clock() + 100
        stale_at = bad if where == "stale_at" else None
        header = EntryCodec.header(expires_at, stale_at, 1)
        self.write_raw(backend, "k", header + pickle.dumps(5))
        assert backend.get("k") is None
        assert backend.get_entry("k") is None
        assert backend.get_many(["k"]) == {}
        assert backend.get_entries(["k", "x"]) == {}
        assert not backend.has("k")
        assert backend.stats()["corrupt"] >= 5
        assert not backend.touch("k", 100)
        with pytest.raises(KeyError):
            backend.incr("k")
        assert backend.add("k", 6)  # a corrupt entry is absent
        assert backend.get("k") == 6
