"""
Coherence messages
==================

What a composition does with the backplane's messages (see :mod:`tieredcache.backplane`).

A ``"set"`` written through an L2 that answers ``swap_entries`` (the Redis backend, with
``SET ... GET``) is announced with its new entry and the version of the entry the write
replaced in L2: one step of the key's history in L2. A process holding exactly that
replaced entry replaces its L1 copy with the new one instead of evicting it; any other
copy is evicted:

- a key this process does not hold is left alone (messages never insert into L1);
- a key with a local write in flight, or a write waiting for replay, is evicted;
- a copy of another version than the replaced one is evicted (it is older than L2's value,
  or newer than this step: either way the next read fetches L2's), a copy of the new
  entry's version is set anew; an expired or undecodable entry evicts, and so does
  version 0 on either side (an entry nobody stamped, which no step can name).

So messages need no order: a step applies only on top of the entry it replaced, whenever it
arrives, and messages of several processes may be delayed and sent in batches (the
backplane's ``linger``). Every other message evicts. The update runs as an L1-only write in
the per-key ordering, so a refill already in flight with an older value is skipped.
"""

from __future__ import annotations

import logging
import typing as t

from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.envelope import read_header
from tieredcache.errors import DeserializationError
from tieredcache.tiered.ordering import L1

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.backplane import Message
    from tieredcache.events import Events
    from tieredcache.stats import Counters
    from tieredcache.tiered.cache import TieredCache
    from tieredcache.tiered.ordering import Ordering
    from tieredcache.tiered.tags import TagIndex

__all__ = ["Listener", "apply_message"]

logger = logging.getLogger("tieredcache")


def apply_message(cache: TieredCache, message: Message) -> int:
    """Apply another process's ``message`` to ``cache``'s L1; how many keys were updated
    in place (the others were evicted, or left alone when not held)."""
    steps = message.previous or {}
    carried = message.entries if message.previous is not None else {}
    codec = getattr(cache.l2, "codec", None)
    updated = 0
    gate = cache.gate
    l1 = cache.l1
    held_version = _held_version(l1)
    # A key neither held nor read or written right now needs nothing: whatever reads it
    # later starts after this write reached L2. (In flight first, then held: a read that
    # began before the write may be refilling L1 now.)
    busy = cache.ordering.busy(message.keys)
    keys = [k for k in message.keys if k in busy or held_version(k) is not None]
    if not keys:
        return 0

    def op(live: list[str]) -> None:
        nonlocal updated
        state_of = dict(zip(slot.keys, slot.states))
        now = cache.timer()
        evict: list[str] = []
        for key in live:
            if state_of[key].writers > 1 or gate.pending(key):
                # A local write of the key is in flight (its L1 leg must not land after
                # this), or waits for replay: no copy, held or to come.
                evict.append(key)
                continue
            held = held_version(key)
            if held is None:
                continue  # not held here: messages never insert
            data = carried.get(key)
            if (
                data is None
                or codec is None
                or not held  # version 0: an entry nobody stamped, which no step can name
                or (held != steps.get(key) and held != _version_in(data))
            ):
                evict.append(key)  # neither a step from the held entry nor the held entry
                continue
            entry = _decode(codec, key, data)
            if (
                entry is None
                or not entry.version
                or (entry.expires_at is not None and entry.expires_at <= now)
                or (entry.version != held and held != steps.get(key))
            ):
                evict.append(key)
                continue
            try:
                # The step's new entry (or the held version again: the same write, set anew).
                l1.set_entry(key, cache.cap(entry, now))
            except Exception:
                evict.append(key)  # too large for L1, say: no copy is the safe copy
                continue
            updated += 1
        if evict:
            l1.delete_many(evict)
            # A local write stamped before this message but not yet begun must not land
            # in L1 after the eviction (its L2 write may be older than the evicting one).
            for key in evict:
                written = state_of[key].written
                written[L1] = max(written[L1], slot.seq)

    # Unmarked: an update must not make a local write that began after it (with a version
    # stamped before it) skip L1, or L1 would keep the other process's older value.
    with cache.ordering.write(keys, next_version(), legs=1) as slot:
        slot.run(L1, op, mark=False)
    return updated


def _held_version(l1: Backend) -> t.Callable[[str], int | None]:
    """How to read the version ``l1`` holds for a key (without counting a read if it can)."""
    peek = getattr(l1, "held_version", None)
    if callable(peek):
        return t.cast("t.Callable[[str], int | None]", peek)

    def held(key: str) -> int | None:
        entry = l1.get_entry(key)
        return None if entry is None else entry.version

    return held


def _version_in(data: bytes) -> int | None:
    """The version an envelope's header states (unverified), or ``None``."""
    try:
        return read_header(data)[2]
    except DeserializationError:
        return None


def _decode(codec: t.Any, key: str, data: bytes) -> Entry | None:
    try:
        entry: Entry = codec.decode(data)
    except DeserializationError as exc:
        logger.warning("tiered: a backplane entry for %r does not verify: %s", key, exc)
        return None
    return entry


class Listener:
    """What one composition does with its backplane's callbacks. Thread-safe.

    Evictions and updates run as L1-only writes in the per-key ordering, so a refill in
    flight with an older value is skipped; a reset flushes L1 and starts a new L1 epoch.
    """

    def __init__(
        self,
        cache: TieredCache,
        *,
        l1: Backend,
        ordering: Ordering,
        counters: Counters,
        tag_index: TagIndex,
        events: Events,
    ) -> None:
        self.cache = cache
        self.l1 = l1
        self.ordering = ordering
        self.counters = counters
        self.tag_index = tag_index
        self.events = events
        self._invalidations = counters.index("invalidations_received")

    def on_invalidate(self, kind: str, keys: list[str]) -> None:
        """Another process changed ``keys``: drop this process's L1 copies."""
        self.counters.slot()[self._invalidations] += 1
        self.tag_index.forget(keys)
        if kind == "clear":
            self.on_reset()
            return
        if not keys:
            return
        try:
            with self.ordering.write(keys, next_version(), legs=1) as slot:
                slot.run(L1, self.l1.delete_many)
        except Exception:
            logger.exception("tiered: evicting invalidated keys from l1 failed")

    def on_message(self, message: Message) -> None:
        """A backplane message: another process's updates or evicts; ours is ignored."""
        if message.own:
            return
        if message.kind == "clear" or not message.keys:
            self.on_invalidate(message.kind, message.keys)
            return
        self.counters.slot()[self._invalidations] += 1
        self.tag_index.forget(message.keys)  # a tag's record changed: read it again
        try:
            apply_message(self.cache, message)
        except Exception:
            logger.exception("tiered: applying a backplane message to l1 failed")
            self.on_reset()

    def on_reset(self) -> None:
        """Invalidations may have been missed: nothing in L1 can be trusted any more."""
        from tieredcache.events import BACKPLANE_RESET

        self.tag_index.reset()
        self.ordering.reset_l1()
        try:
            self.l1.clear()
        except Exception:
            logger.exception("tiered: flushing l1 after a backplane reset failed")
        self.events.emit(BACKPLANE_RESET)
