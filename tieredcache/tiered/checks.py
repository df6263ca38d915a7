"""
Checks before a write
=====================

A value must be serializable by every layer before any layer is written, so that a value
that cannot be stored leaves every tier unchanged. :class:`WriteChecks` knows which
serializers a composition must try: under ``SequentialWrite`` the L1 write itself fails
first when L1 cannot serialize a value, so only the serializers L1 does not already apply
are tried beforehand; and the L2's own envelope codec checks a value by encoding the entry
it will write, keeping the envelope on it (``Entry.wire``) so that the L2 write sends those
very bytes: a write is encoded once.
"""

from __future__ import annotations

import typing as t

from tieredcache.entry import Entry
from tieredcache.policies.write import SequentialWrite
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.tiered.cache import TieredCache

__all__ = ["WriteChecks", "layer_serializers"]


def layer_serializers(layer: Backend) -> list[Serializer]:
    """Every serializer ``layer`` applies (a composition: all of its layers')."""
    nested = getattr(layer, "serializers", None)
    if callable(nested) and hasattr(layer, "l1") and hasattr(layer, "l2"):
        return list(nested())
    serializer = getattr(layer, "serializer", None)
    return [] if serializer is None else [serializer]


class WriteChecks:
    """The serializability checks of one composition's writes. Thread-safe (immutable)."""

    def __init__(self, cache: TieredCache) -> None:
        l1_own = layer_serializers(cache.l1) if isinstance(cache.write, SequentialWrite) else []
        unique: list[Serializer] = []
        for serializer in cache.serializers():
            if all(serializer is not s for s in (*l1_own, *unique)):
                unique.append(serializer)
        codec = getattr(cache.l2, "codec", None)
        self.codecs: list[EntryCodec] = []
        if isinstance(codec, EntryCodec) and any(s is codec.serializer for s in unique):
            unique = [s for s in unique if s is not codec.serializer]
            self.codecs = [codec]
        self.serializers = unique

    def serializable(self, values: t.Iterable[t.Any]) -> None:
        """Raise :class:`~tieredcache.errors.SerializationError` unless every layer can
        serialize every value."""
        values = list(values)
        for serializer in (*self.serializers, *(c.serializer for c in self.codecs)):
            for value in values:
                serializer.dumps(value)

    def entries(self, entries: t.Iterable[Entry]) -> None:
        """:meth:`serializable` for entries about to be stored: L2's codec encodes each once,
        and the L2 write reuses the envelope."""
        for entry in entries:
            for codec in self.codecs:
                codec.encode_once(entry)
            for serializer in self.serializers:
                serializer.dumps(entry.value)
