"""The eviction orders of :class:`~tieredcache.backends.memory.MemoryBackend`: which key goes
first when the store is full. LRU and FIFO keep their order in one
:class:`collections.OrderedDict` (:class:`LinkedOrder`), LFU in a ``cachetools.LFUCache``
(:func:`lfu_order`). Each maps a key to its accounted size (1 per entry for a count bound),
remembers the keys it evicts (``evicted``) so that the backend's read map can follow,
replays the reads the backend buffered (``replay``) and reports the bytes of its own
structure (``structure_bytes``). None is thread-safe: the backend's lock guards them.
"""

from __future__ import annotations

import collections
import itertools
import sys
import typing as t

import cachetools

__all__ = ["POLICIES", "LinkedOrder", "lfu_order", "new_order"]

POLICIES = ("lru", "lfu", "fifo")
"""The eviction policies."""

# How many stores the LFU order reuses the size of its frequency links before walking them again.
_LINKS_REFRESH = 32


class LinkedOrder:
    """LRU or FIFO eviction order: one ``OrderedDict`` of key -> accounted size, oldest
    first, bounded by a total size (1 per entry for a count bound). Not thread-safe: the
    backend's lock guards it. Remembers what it evicts so the read map can follow."""

    def __init__(self, maxsize: float, *, lru: bool) -> None:
        self.maxsize = maxsize
        self.currsize = 0
        self.lru = lru
        self.evicted: list[str] = []
        self._od: collections.OrderedDict[str, int] = collections.OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._od

    def __len__(self) -> int:
        return len(self._od)

    def keys(self) -> t.KeysView[str]:
        return self._od.keys()

    def structure_bytes(self) -> int:
        """The bytes of the order itself: its table and its nodes."""
        return sys.getsizeof(self._od)

    def __setitem__(self, key: str, size: int) -> None:
        od = self._od
        old = od.pop(key, None)
        if old is not None:
            self.currsize -= old
        if size > self.maxsize:
            raise ValueError("value too large")
        while self.currsize + size > self.maxsize:
            self.popitem()
        od[key] = size
        self.currsize += size

    def __delitem__(self, key: str) -> None:
        self.currsize -= self._od.pop(key)

    def add_units(self, keys: t.Iterable[str]) -> None:
        """``self[key] = 1`` for each of ``keys`` in turn (a count bound: every entry
        accounts for 1), evicting the oldest once all are in."""
        od = self._od
        pop = od.pop
        added = 0
        for key in keys:
            old = pop(key, None)
            if old is None:
                added += 1
            else:
                added += 1 - old
            od[key] = 1
        self.currsize += added
        while self.currsize > self.maxsize:
            self.popitem()

    def popitem(self) -> tuple[str, int]:
        key, size = self._od.popitem(last=False)
        self.currsize -= size
        self.evicted.append(key)
        return key, size

    def replay(self, reads: collections.deque[str]) -> None:
        """Record the buffered reads, oldest first, emptying the buffer."""
        if not self.lru:
            reads.clear()
            return
        move, popleft = self._od.move_to_end, reads.popleft
        # At most the reads buffered now (readers keep appending): moved in a C loop, which
        # stops at a key evicted or deleted since it was read, then goes on after it.
        budget = len(reads)
        while budget > 0:
            before = len(reads)
            try:
                # A deque that keeps nothing runs the moves to the end.
                collections.deque(map(move, itertools.islice(iter(popleft, None), budget)), 0)
                return
            except KeyError:  # evicted or deleted since it was read
                budget -= max(1, before - len(reads))
            except IndexError:  # emptied by another replay
                return

    def clear(self) -> None:
        self._od.clear()
        self.currsize = 0


def lfu_order(maxsize: float, getsizeof: t.Any = None) -> t.Any:
    """The LFU eviction order: a ``cachetools.LFUCache`` of key -> accounted size that
    remembers what it evicts, reports its own bytes and replays buffered reads."""

    class _Order(cachetools.LFUCache):
        """The LFU order; remembers what it evicts so the read map can follow."""

        def __init__(self) -> None:
            super().__init__(maxsize, getsizeof)
            self.evicted: list[str] = []
            self._maps = [m for m in vars(self).values() if type(m) is dict]
            self._links_bytes = 0
            self._links_age = _LINKS_REFRESH

        def structure_bytes(self) -> int:
            """The bytes of the order itself: its maps, and its frequency links (walked
            again every few stores: there is one per distinct use count)."""
            self._links_age += 1
            if self._links_age >= _LINKS_REFRESH:
                self._links_age = 0
                root = vars(self).get("_LFUCache__root")
                total = 0
                link = root.next if root is not None else None
                while link is not None and link is not root:
                    total += sys.getsizeof(link) + sys.getsizeof(link.keys)
                    link = link.next
                self._links_bytes = total
            return sum(map(sys.getsizeof, self._maps)) + self._links_bytes

        def popitem(self) -> tuple[str, int]:
            key, size = super().popitem()
            self.evicted.append(key)
            return key, size

        def replay(self, reads: collections.deque[str]) -> None:
            popleft = reads.popleft
            for _ in range(len(reads)):
                try:
                    key = popleft()
                except IndexError:
                    break
                if key in self:
                    self[key]

    return _Order()


def new_order(policy: str, bound: float, *, sized: bool) -> t.Any:
    """An empty order for ``policy`` (one of :data:`POLICIES`) holding at most ``bound``:
    entries, or bytes when ``sized`` (the sizes given are then counted as they are)."""
    if policy == "lfu":
        return lfu_order(bound, _identity if sized else None)
    return LinkedOrder(bound, lru=policy == "lru")


def _identity(size: int) -> int:
    return size
