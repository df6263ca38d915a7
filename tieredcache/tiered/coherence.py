"""
Coherence messages
==================

What a composition does with the backplane's messages (see :mod:`tieredcache.backplane`).

A ``"set"`` written through a Redis L2 that shares the backplane's server is announced in
the same ``MULTI``/``EXEC`` as the write, so messages that carry entries follow the order in
which Redis applied the writes. A process that holds one of the keys replaces its L1 copy
with the carried entry, in order, instead of evicting it:

- a key this process does not hold is left alone (messages never insert into L1);
- a key with a local write in flight, a write waiting for replay, or an own write whose
  announcement has not yet come back through the channel is evicted (a remote write that
  Redis applied before ours may arrive after ours reached L1);
- a carried entry older than the held one evicts it (Redis applied it later: the next read
  fetches the truth), an equal one changes nothing, an expired or undecodable one evicts.

Every other message evicts, as before. The update runs as an L1-only write in the per-key
ordering, so a refill already in flight with an older value is skipped.
"""

from __future__ import annotations

import logging
import threading
import typing as t

from tieredcache.entry import Entry
from tieredcache.entry import next_version
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

__all__ = ["Listener", "OwnWrites", "apply_message"]

logger = logging.getLogger("tieredcache")

#: The most own writes awaiting their announcement that are remembered.
OWN_LIMIT = 50_000


class OwnWrites:
    """This process's ``"set"`` writes whose announcement has not come back yet.

    Thread-safe. When more than :data:`OWN_LIMIT` wait, the oldest is forgotten and handed
    to ``on_forget`` (the composition evicts it, the safe choice).
    """

    def __init__(self, on_forget: t.Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, int] = {}
        self._on_forget = on_forget

    def mark(self, keys: t.Iterable[str], seq: int) -> None:
        """Writes of ``keys`` at ``seq`` are under way."""
        forgotten: list[str] = []
        with self._lock:
            waiting = self._waiting
            for key in keys:
                waiting.pop(key, None)
                waiting[key] = seq
            while len(waiting) > OWN_LIMIT:
                oldest = next(iter(waiting))
                del waiting[oldest]
                forgotten.append(oldest)
        if forgotten and self._on_forget is not None:
            for key in forgotten:
                self._on_forget(key)

    def confirm(self, keys: t.Iterable[str], version: int) -> None:
        """Our announcement of ``keys`` at ``version`` came back through the channel."""
        with self._lock:
            waiting = self._waiting
            for key in keys:
                if waiting.get(key) == version:
                    del waiting[key]

    def waiting(self, key: str) -> bool:
        """True if an own write of ``key`` has not come back yet."""
        return key in self._waiting

    def clear(self) -> None:
        with self._lock:
            self._waiting.clear()

    def __len__(self) -> int:
        return len(self._waiting)


def apply_message(cache: TieredCache, own: OwnWrites, message: Message) -> int:
    """Apply another process's ``message`` to ``cache``'s L1; how many keys were updated
    in place (the others were evicted, or left alone when not held)."""
    keys = message.keys
    updates: dict[str, Entry] = {}
    codec = getattr(cache.l2, "codec", None)
    if message.entries and codec is not None:
        for key, data in message.entries.items():
            try:
                updates[key] = codec.decode(data)
            except DeserializationError as exc:
                logger.warning("tiered: a backplane entry for %r does not verify: %s", key, exc)
    updated = 0
    gate = cache.gate

    def op(live: list[str]) -> None:
        nonlocal updated
        state_of = dict(zip(slot.keys, slot.states))
        now = cache.timer()
        evict: list[str] = []
        for key in live:
            entry = updates.get(key)
            if (
                entry is None
                or state_of[key].writers > 1  # a local write of the key is in flight
                or own.waiting(key)
                or gate.pending(key)
                or (entry.expires_at is not None and entry.expires_at <= now)
            ):
                evict.append(key)
                continue
            held = cache.l1.get_entry(key)
            if held is None:
                continue  # not held here: messages never insert
            if entry.version > held.version:
                try:
                    cache.l1.set_entry(key, cache.cap(entry, now))
                except Exception:
                    evict.append(key)  # too large for L1, say: no copy is the safe copy
                    continue
                updated += 1
            elif entry.version < held.version:
                evict.append(key)
        if evict:
            cache.l1.delete_many(evict)

    with cache.ordering.write(keys, next_version(), legs=1) as slot:
        slot.run(L1, op)
    return updated


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
        own: OwnWrites,
        events: Events,
    ) -> None:
        self.cache = cache
        self.l1 = l1
        self.ordering = ordering
        self.counters = counters
        self.tag_index = tag_index
        self.own = own
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
        """A backplane message: ours confirms our write; another's updates or evicts."""
        if message.own:
            if message.kind == "set":
                self.own.confirm(message.keys, message.version)
            return
        if message.kind == "clear" or not message.keys:
            self.on_invalidate(message.kind, message.keys)
            return
        self.counters.slot()[self._invalidations] += 1
        try:
            apply_message(self.cache, self.own, message)
        except Exception:
            logger.exception("tiered: applying a backplane message to l1 failed")
            self.on_reset()

    def on_reset(self) -> None:
        """Invalidations may have been missed: nothing in L1 can be trusted any more."""
        from tieredcache.events import BACKPLANE_RESET

        self.tag_index.reset()
        self.ordering.l1_reset = next_version()
        try:
            self.l1.clear()
        except Exception:
            logger.exception("tiered: flushing l1 after a backplane reset failed")
        self.events.emit(BACKPLANE_RESET)
