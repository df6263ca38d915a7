"""
Announcements
=============

:class:`Announcements` holds what a composition's L2 gate has to announce on the
backplane: the keys whose L2 write has landed, newest per key winning, and a pending
``clear`` (which makes every earlier key moot). A ``"set"`` may carry its new entry and the
version of the entry it replaced in L2 (see :mod:`tieredcache.tiered.coherence`).

The gate's worker sends what is queued in as few messages as it can, once the oldest
announcement has waited :attr:`Announcements.linger` seconds (at once for a ``clear`` or a
full batch): the writes of that time cost one ``PUBLISH``. A batch the backplane could not
send goes back in the queue, behind nothing newer.
"""

from __future__ import annotations

import collections
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from tieredcache.backplane import Backplane

__all__ = ["ANNOUNCE_BATCH", "ANNOUNCE_BYTES", "Announcements", "Pending"]

#: The most keys one announcement carries.
ANNOUNCE_BATCH = 500
#: The most bytes of carried entries one announcement holds.
ANNOUNCE_BYTES = 64 * 1024


class Pending(t.NamedTuple):
    """What is queued for one key."""

    kind: str
    seq: int
    #: A ``"set"``'s encoded entry, or ``None`` (keys only: receivers evict).
    data: bytes | None = None
    #: The version of that entry.
    version: int = 0
    #: The version of the entry the write replaced in L2 (``None``: unknown or none).
    previous: int | None = None


class Announcements:
    """A queue of keys to announce, newest per key winning. Thread-safe.

    :param linger: seconds the oldest queued announcement may wait for others.
    """

    def __init__(self, linger: float = 0.0) -> None:
        self.linger = linger
        self._lock = threading.Lock()
        self._keys: collections.OrderedDict[str, Pending] = collections.OrderedDict()
        self._clear: int | None = None
        #: Writes whose L2 call failed for availability and may have landed all the same
        #: (the reply was lost): announced, for eviction, once L2 answers again.
        self._doubtful: dict[str, Pending] = {}
        self._since = 0.0  # monotonic time the queue stopped being empty
        #: Batches the backplane failed to send (and that were queued again).
        self.errors = 0

    def __bool__(self) -> bool:
        return bool(self._keys) or self._clear is not None

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, kind: str, keys: t.Sequence[str], seq: int) -> None:
        """Queue ``keys`` written by a ``kind`` operation at ``seq`` (``"clear"``: all)."""
        with self._lock:
            self._started()
            if kind == "clear":
                self._keys.clear()
                self._clear = seq
            else:
                for key in keys:
                    self._put(key, Pending(kind, seq))

    def add_updates(self, updates: t.Mapping[str, tuple[bytes, int, int | None]], seq: int) -> None:
        """Queue ``"set"`` writes at ``seq`` that carry their entries: per key, the encoded
        entry, its version and the version of the entry it replaced in L2.

        When the key's queued announcement is this process's previous write of it, and
        that is exactly what this write replaced, the two go out as one step (from what
        the first replaced to the new entry), so receivers holding the older entry still
        update in place.
        """
        with self._lock:
            self._started()
            for key, (data, version, previous) in updates.items():
                if previous == version:
                    previous = None  # the same version twice names no step
                queued = self._keys.get(key)
                if (
                    queued is not None
                    and queued.data is not None
                    and previous is not None
                    and queued.version == previous
                ):
                    previous = queued.previous
                self._put(key, Pending("set", seq, data, version, previous))

    def _started(self) -> None:
        if not self._keys and self._clear is None:
            self._since = time.monotonic()

    def _put(self, key: str, pending: Pending) -> None:
        self._keys[key] = pending
        self._keys.move_to_end(key)

    def doubt(self, kind: str, keys: t.Sequence[str], seq: int) -> None:
        """``keys`` written by a ``kind`` operation at ``seq`` may have reached L2 although
        the call failed: hold their announcement until :meth:`release_doubts`."""
        with self._lock:
            for key in keys:
                self._doubtful[key] = Pending(kind, seq)

    @property
    def doubtful(self) -> int:
        """How many keys wait for L2 to answer before they are announced."""
        return len(self._doubtful)

    def release_doubts(self) -> None:
        """L2 answers again: queue the held announcements (keys only: receivers evict)."""
        with self._lock:
            doubtful, self._doubtful = self._doubtful, {}
            if doubtful:
                self._started()
            for key, pending in doubtful.items():
                if key not in self._keys:
                    self._put(key, pending)

    def due(self) -> float:
        """Seconds until what is queued should be sent (0: now)."""
        if self._clear is not None or len(self._keys) >= ANNOUNCE_BATCH:
            return 0.0
        return max(0.0, self._since + self.linger - time.monotonic())

    def send(self, backplane: Backplane) -> bool:
        """Send what is queued; False if the backplane failed (the rest stays queued)."""
        with self._lock:
            clear, self._clear = self._clear, None
            batch = list(self._keys.items())
            self._keys.clear()
        messages = _messages(clear, batch)
        for index, (kind, seq, items) in enumerate(messages):
            carried = {key: p.data for key, p in items if p.data is not None}
            sent = backplane.publish(
                kind,
                [key for key, _ in items],
                seq,
                entries=carried or None,
                previous={key: p.previous for key, p in items if p.data is not None} or None,
            )
            if sent is False:
                self._requeue(messages[index:])
                return False
        return True

    def _requeue(self, messages: list[tuple[str, int, list[tuple[str, Pending]]]]) -> None:
        with self._lock:
            self.errors += 1
            newer = self._keys
            self._keys = collections.OrderedDict()
            self._since = time.monotonic() - self.linger  # due again at once
            for kind, seq, items in messages:
                if kind == "clear":
                    if self._clear is None:
                        self._clear = seq
                    continue
                for key, pending in items:
                    self._keys[key] = pending
            for key, value in newer.items():  # announcements queued meanwhile are newer
                self._put(key, value)


def _messages(
    clear: int | None, batch: list[tuple[str, Pending]]
) -> list[tuple[str, int, list[tuple[str, Pending]]]]:
    """The messages that announce ``batch`` (after a ``clear`` at ``clear``, if any): one
    per kind, split at :data:`ANNOUNCE_BATCH` keys or :data:`ANNOUNCE_BYTES` of entries;
    each carries the newest ``seq`` of its keys."""
    messages: list[tuple[str, int, list[tuple[str, Pending]]]] = []
    if clear is not None:
        messages.append(("clear", clear, []))
    groups: dict[str, list[tuple[str, Pending]]] = {}
    for key, pending in batch:
        groups.setdefault(pending.kind, []).append((key, pending))
    for kind, items in groups.items():
        chunk: list[tuple[str, Pending]] = []
        size = 0
        for key, pending in items:
            weight = 0 if pending.data is None else len(pending.data)
            if chunk and (len(chunk) >= ANNOUNCE_BATCH or size + weight > ANNOUNCE_BYTES):
                messages.append((kind, max(p.seq for _, p in chunk), chunk))
                chunk, size = [], 0
            chunk.append((key, pending))
            size += weight
        if chunk:
            messages.append((kind, max(p.seq for _, p in chunk), chunk))
    return messages
