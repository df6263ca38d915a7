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
from tieredcache.errors import ConfigurationError
from tieredcache.policies.read import ReadPolicy
from tieredcache.policies.read import SequentialRead
from tieredcache.policies.refill import Refill
from tieredcache.policies.write import LoserPolicy
from tieredcache.policies.write import RaceWrite
from tieredcache.policies.write import SequentialWrite
from tieredcache.policies.write import WritePolicy
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.offload import Offload
    from tieredcache.tiered.cache import TieredCache


def check_policies(
    read: ReadPolicy | None,
    write: WritePolicy | None,
    refill: t.Any,
    offload: Offload | None,
) -> tuple[ReadPolicy, WritePolicy]:
    """The read and write policies of a composition (defaults filled in), checked.

    :raises ConfigurationError: a policy of the wrong type, or a ``RaceWrite`` whose losers
        would be handed to an offload that drops them.
    """
    read = read if read is not None else SequentialRead()
    write = write if write is not None else SequentialWrite()
    if not isinstance(read, ReadPolicy):
        raise ConfigurationError(f"read must be a ReadPolicy, not {read!r}")
    if not isinstance(write, WritePolicy):
        raise ConfigurationError(f"write must be a WritePolicy, not {write!r}")
    if not isinstance(refill, Refill):
        raise ConfigurationError(f"refill must be Refill.ALWAYS or Refill.NEVER, not {refill!r}")
    if (
        isinstance(write, RaceWrite)
        and write.loser is LoserPolicy.OFFLOAD
        and offload is not None
        and not offload.runs_tasks
    ):
        raise ConfigurationError(
            "RaceWrite(loser=LoserPolicy.OFFLOAD) needs an offload that runs tasks; "
            f"{type(offload).__name__} drops them. Use ThreadPoolOffload or "
            "InlineOffload, or RaceWrite(loser=LoserPolicy.DROP) to drop losers."
        )
    return read, write


__all__ = ["WriteChecks", "check_policies", "layer_serializers"]


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
