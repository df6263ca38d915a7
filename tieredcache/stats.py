"""Counters that add up, without a lock on the hot path.

Each thread increments its own small list of counters, so an increment is a plain list
update that no other thread writes. A snapshot sums the lists of live threads plus what
finished threads left behind, under a lock.

The hottest paths (a cache hit) use an *incrementer* instead: one call that adds one to a
fixed group of counters. Under the GIL it advances a single :func:`itertools.count`, which
is atomic and costs about a third of a thread-local lookup; a snapshot adds its value to
every counter of the group.
"""

from __future__ import annotations

import itertools
import sys
import threading
import typing as t
import weakref

__all__ = ["COUNTERS", "TIERED_COUNTERS", "Counters"]


COUNTERS = ("hits", "misses", "errors", "corrupt", "sets", "deletes")
"""Every backend's counters. ``hits + misses + errors`` equals the number of keys looked up;
``corrupt`` counts payloads that failed to verify or decode (each also counted as a miss)."""

TIERED_COUNTERS = (
    *COUNTERS,
    "l1_hits",
    "l2_hits",
    "refills",
    "refills_skipped",
    "refill_errors",
    "l1_read_errors",
    "l2_read_errors",
    "l1_write_errors",
    "l2_write_errors",
    "stale_hits",
    "refreshes",
    "refresh_errors",
    "invalidations_received",
)
"""A composition's counters: the backend counters (for the composition as a whole: a hit
in either layer is one hit) plus per-layer hits, refills, absorbed layer failures,
stale-while-revalidate and cross-process invalidations."""

#: Position of each composition counter in a thread's slot.
TIERED_INDEX = {name: i for i, name in enumerate(TIERED_COUNTERS)}


class Counters:
    """A fixed set of named, monotonically increasing counters.

    Thread-safe: increments from any thread are never lost, and :meth:`snapshot` is
    consistent for counts that a single call increments together.

    :param names: the counter names, in display order.
    """

    def __init__(self, names: t.Sequence[str]) -> None:
        self.names = tuple(names)
        self._index = {name: i for i, name in enumerate(self.names)}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._live: dict[int, list[int]] = {}
        self._retired = [0] * len(self.names)
        # Incrementers: (indices, count, value of the count at the last reset).
        self._linked: list[tuple[tuple[int, ...], itertools.count[int], list[int]]] = []

    def slot(self) -> list[int]:
        """The calling thread's counter list (index with :meth:`index`)."""
        try:
            return self._local.slot  # type: ignore[no-any-return]
        except AttributeError:
            return self._new_slot()

    def _new_slot(self) -> list[int]:
        slot = [0] * len(self.names)
        ident = id(slot)
        with self._lock:
            self._live[ident] = slot
        self._local.slot = slot
        # When the thread ends its local storage is dropped, and the guard folds the counts in.
        self._local.guard = _RetireOnExit(self, ident)
        return slot

    def _retire(self, ident: int) -> None:
        with self._lock:
            slot = self._live.pop(ident, None)
            if slot is not None:
                for i, value in enumerate(slot):
                    self._retired[i] += value

    def index(self, name: str) -> int:
        """The position of ``name`` in a slot."""
        return self._index[name]

    def incr(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``."""
        self.slot()[self._index[name]] += amount

    def incrementer(self, *names: str) -> t.Callable[[], object]:
        """A callable that adds one to each of ``names``: the cheapest count on a hot path.

        With the GIL, calling it advances one :func:`itertools.count` (atomic, no
        thread-local lookup); without it (free-threaded builds) it falls back to the
        calling thread's slot.
        """
        indices = tuple(self._index[name] for name in names)
        if not _GIL:

            def bump() -> None:
                slot = self.slot()
                for i in indices:
                    slot[i] += 1

            return bump
        count = itertools.count()
        with self._lock:
            self._linked.append((indices, count, [0]))
        return count.__next__

    def share(self, incrementer: t.Callable[[], object], *names: str) -> bool:
        """Count here too, under ``names``, every call of ``incrementer`` (one that another
        :class:`Counters` made): one atomic call then counts in both, until
        :meth:`unshare`. False where that cannot be done (free-threaded builds, or not an
        incrementer): call both instead."""
        count = getattr(incrementer, "__self__", None)
        if not _GIL or type(count) is not itertools.count:
            return False
        indices = tuple(self._index[name] for name in names)
        with self._lock:
            self._linked.append((indices, count, [_count_value(count)]))
        return True

    def unshare(self, incrementer: t.Callable[[], object]) -> None:
        """Stop counting ``incrementer``'s calls here, keeping what they counted so far."""
        count = getattr(incrementer, "__self__", None)
        with self._lock:
            kept = []
            for link in self._linked:
                indices, linked, base = link
                if linked is count:
                    value = _count_value(linked) - base[0]
                    for i in indices:
                        self._retired[i] += value
                else:
                    kept.append(link)
            self._linked = kept

    def snapshot(self) -> dict[str, int]:
        """The current totals, by name."""
        with self._lock:
            totals = self._retired[:]
            for slot in self._live.values():
                for i, value in enumerate(slot):
                    totals[i] += value
            for indices, count, base in self._linked:
                value = _count_value(count) - base[0]
                for i in indices:
                    totals[i] += value
        return dict(zip(self.names, totals))

    def reset(self) -> None:
        """Set every counter to zero."""
        with self._lock:
            self._retired = [0] * len(self.names)
            for slot in self._live.values():
                for i in range(len(slot)):
                    slot[i] = 0
            for _, count, base in self._linked:
                base[0] = _count_value(count)


# Free-threaded builds (PEP 703) run without the GIL, where itertools.count is not atomic.
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()


def _count_value(count: itertools.count[int]) -> int:
    """The next value ``count`` would return, without advancing it (its repr is ``count(N)``)."""
    return int(repr(count)[6:-1])


class _RetireOnExit:
    """Held in a thread's local storage; folds that thread's counts in when it is dropped."""

    __slots__ = ("counters", "ident")

    def __init__(self, counters: Counters, ident: int) -> None:
        self.counters = weakref.ref(counters)
        self.ident = ident

    def __del__(self) -> None:
        counters = self.counters()
        if counters is not None:
            counters._retire(self.ident)
