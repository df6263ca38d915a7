"""
Replay items
============

A write, delete or touch whose L2 leg failed under fail-open waits in the L2 gate's replay
queue as a :class:`ReplayItem` (one per key, the newest winning). The factories here build
the item of each kind of write; :func:`replay_op` is the L2 part of replaying one.
"""

from __future__ import annotations

import collections
import threading
import typing as t

from tieredcache.entry import Entry
from tieredcache.errors import BackendError
from tieredcache.errors import BackendUnavailableError
from tieredcache.tiered.ordering import L1
from tieredcache.tiered.ordering import L2

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.ratelog import RateLimitedLog
    from tieredcache.tiered.ordering import Ordering

T = t.TypeVar("T")


class ReplayHost(t.Protocol):
    """What replaying needs of the composition's L2 gate (:class:`~.l2gate.L2Gate`)."""

    l1: Backend
    l2: Backend
    ordering: Ordering
    queue: ReplayQueue
    timeout: float | None
    log: RateLimitedLog

    def call(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        """Call ``fn(*args)`` on L2 through the breaker."""
        ...

    def announce(self, kind: str, keys: t.Sequence[str], seq: int) -> None:
        """Tell other processes that ``keys`` changed in L2."""
        ...


__all__ = [
    "ReplayFactory",
    "ReplayHost",
    "ReplayItem",
    "ReplayQueue",
    "delete_replay",
    "replay_op",
    "run_replays",
    "set_replay",
    "touch_replay",
]


class ReplayItem(t.NamedTuple):
    """An L2 write that failed under fail-open and waits to be replayed."""

    op: str  # "set", "delete" or "touch"
    seq: int  # the ordering sequence number of the failed write
    entry: Entry | None  # for "set"
    expires_at: float | None  # for "touch"


ReplayFactory = t.Callable[[str, int], ReplayItem]
"""Builds the replay item of a key whose L2 write at ``seq`` failed."""


def delete_replay(key: str, seq: int) -> ReplayItem:
    """The replay factory of a delete."""
    return ReplayItem("delete", seq, None, None)


def set_replay(items: t.Mapping[str, Entry]) -> ReplayFactory:
    """The replay factory of a set of ``items``."""
    return lambda key, seq: ReplayItem("set", seq, items[key], None)


def touch_replay(expires_at: float | None) -> ReplayFactory:
    """The replay factory of a touch to ``expires_at``."""
    return lambda key, seq: ReplayItem("touch", seq, None, expires_at)


def replay_op(gate: ReplayHost, key: str, item: ReplayItem) -> t.Callable[[list[str]], object]:
    """The L2 part of replaying ``item`` for ``key``: skipped (``None``) when L2 holds a
    write newer than it, made by another process meanwhile."""

    def op(_: list[str]) -> bool | None:
        # Last writer wins across processes: a write another process made after this one
        # (versions are comparable wall-clock times) is not overwritten by the late replay.
        current = gate.call(gate.l2.get_entry, key)
        if current is not None and current.version > item.seq:
            return None
        if item.op == "set":
            assert item.entry is not None
            gate.call(gate.l2.set_entry, key, item.entry)
        elif item.op == "delete":
            gate.call(gate.l2.delete, key)
        else:
            gate.call(gate.l2.touch_entry, key, item.expires_at)
        return True

    return op


class ReplayQueue:
    """The writes waiting for replay, one per key, newest winning, oldest first. Thread-safe.

    :param limit: the most keys waiting; past it the oldest are dropped (and counted).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.replayed = 0
        self.dropped = 0
        self.superseded = 0
        self.after_fork()

    def after_fork(self) -> None:
        """Empty, with a new lock: a forked child leaves the parent's writes to the parent."""
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, ReplayItem] = collections.OrderedDict()
        self._replaying: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> ReplayItem | None:
        """The write of ``key`` waiting for replay, if any."""
        return self._items.get(key)

    def add(self, key: str, item: ReplayItem) -> list[str]:
        """Queue ``item`` unless a newer write of ``key`` waits; the keys dropped for room."""
        dropped: list[str] = []
        with self._lock:
            current = self._items.get(key)
            if current is not None and current.seq > item.seq:
                return dropped
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.limit:
                dropped.append(self._items.popitem(last=False)[0])
            self.dropped += len(dropped)
        return dropped

    def supersede(self, keys: t.Iterable[str], seq: int) -> None:
        """Writes of ``keys`` at ``seq`` reached L2: drop the older ones waiting."""
        with self._lock:
            for key in keys:
                item = self._items.get(key)
                if item is not None and item.seq <= seq:
                    del self._items[key]
                    self.superseded += 1

    def snapshot(self) -> list[tuple[str, ReplayItem]]:
        """The waiting writes, oldest first."""
        with self._lock:
            return list(self._items.items())

    def begin(self, key: str, item: ReplayItem) -> bool:
        """Start replaying ``item``: False if it was superseded or is being replayed.

        The item stays queued (reads of the key still answer from it) until :meth:`end`.
        """
        with self._lock:
            if self._items.get(key) is not item or key in self._replaying:
                return False
            self._replaying.add(key)
            return True

    def end(self, key: str, item: ReplayItem, *, done: bool) -> None:
        """The replay of ``item`` is over: ``done`` (landed, superseded or refused) removes
        it unless a newer write of the key was queued meanwhile."""
        with self._lock:
            self._replaying.discard(key)
            if done and self._items.get(key) is item:
                del self._items[key]

    def count(self, *, replayed: int = 0, superseded: int = 0) -> None:
        with self._lock:
            self.replayed += replayed
            self.superseded += superseded

    def reset_stats(self) -> None:
        with self._lock:
            self.replayed = self.dropped = self.superseded = 0

    def stats(self) -> dict[str, int]:
        return {
            "replay_pending": len(self._items),
            "replayed": self.replayed,
            "replay_dropped": self.dropped,
            "replay_superseded": self.superseded,
        }


def run_replays(gate: ReplayHost) -> int:
    """Replay the writes queued in ``gate``, oldest first; how many landed. Stops at the
    first outage; a write the server refuses is logged and dropped; one that a newer write
    superseded meanwhile is dropped, and so is its L1 copy."""
    queue = gate.queue
    landed = 0
    for key, item in queue.snapshot():
        with gate.ordering.write([key], item.seq) as slot:
            if not queue.begin(key, item):
                continue  # superseded meanwhile by a newer write, or being replayed
            done = True
            try:
                ran = slot.run(
                    L2,
                    replay_op(gate, key, item),
                    mark=item.op != "touch",
                    timeout=gate.timeout,
                )
            except BackendUnavailableError:
                done = False
                return landed
            except BackendError as exc:
                # The server refused this key's write: replaying it again cannot help.
                gate.log.warning(
                    "replay-refused",
                    "tiered: replaying a %s of %r failed: %r",
                    item.op,
                    key,
                    exc,
                )
                continue
            finally:
                queue.end(key, item, done=done)
            if ran is None:
                # A newer write of the key reached L2, or is queued, meanwhile. L1 may
                # still hold this one (written while L2 was down): drop it unless a
                # newer write of this process is there.
                queue.count(superseded=1)
                if item.op != "touch":
                    slot.run(L1, gate.l1.delete_many)
                continue
            if item.op == "delete":
                # L1 may have been refilled from L2's old value before the delete landed.
                slot.run(L1, gate.l1.delete_many)
            landed += 1
            queue.count(replayed=1)
            gate.announce(item.op, [key], item.seq)
    return landed
