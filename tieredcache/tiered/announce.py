"""
Announcements
=============

:class:`Announcements` holds what a composition's L2 gate has to announce on the
backplane: the keys whose L2 write has landed, newest per key winning, and a pending
``clear`` (which makes every earlier key moot). The gate's worker sends them in batches; a
batch the backplane could not send goes back in the queue, behind nothing newer.
"""

from __future__ import annotations

import collections
import threading
import typing as t

if t.TYPE_CHECKING:
    from tieredcache.backplane import Backplane

__all__ = ["ANNOUNCE_BATCH", "Announcements"]

#: The most keys one announcement carries.
ANNOUNCE_BATCH = 500


class Announcements:
    """A queue of keys to announce, newest per key winning. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: collections.OrderedDict[str, tuple[str, int]] = collections.OrderedDict()
        self._clear: int | None = None
        #: Batches the backplane failed to send (and that were queued again).
        self.errors = 0

    def __bool__(self) -> bool:
        return bool(self._keys) or self._clear is not None

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, kind: str, keys: t.Sequence[str], seq: int) -> None:
        """Queue ``keys`` written by a ``kind`` operation at ``seq`` (``"clear"``: all)."""
        with self._lock:
            if kind == "clear":
                self._keys.clear()
                self._clear = seq
            else:
                for key in keys:
                    self._keys[key] = (kind, seq)
                    self._keys.move_to_end(key)

    def drop(self, keys: t.Iterable[str], seq: int) -> None:
        """Forget queued announcements of ``keys`` at ``seq`` or older (sent another way)."""
        if not self._keys:
            return
        with self._lock:
            for key in keys:
                pending = self._keys.get(key)
                if pending is not None and pending[1] <= seq:
                    del self._keys[key]

    def send(self, backplane: Backplane) -> bool:
        """Send what is queued; False if the backplane failed (the rest stays queued)."""
        with self._lock:
            clear, self._clear = self._clear, None
            batch = list(self._keys.items())
            self._keys.clear()
        groups: dict[str, tuple[list[str], int]] = {}
        for key, (kind, seq) in batch:
            keys, newest = groups.get(kind, ([], 0))
            keys.append(key)
            groups[kind] = (keys, max(newest, seq))
        messages: list[tuple[str, list[str], int]] = []
        if clear is not None:
            messages.append(("clear", [], clear))
        for kind, (keys, seq) in groups.items():
            for start in range(0, len(keys), ANNOUNCE_BATCH):
                messages.append((kind, keys[start : start + ANNOUNCE_BATCH], seq))
        for index, (kind, keys, seq) in enumerate(messages):
            if backplane.publish(kind, keys, seq) is False:
                self._requeue(messages[index:])
                return False
        return True

    def _requeue(self, messages: list[tuple[str, list[str], int]]) -> None:
        with self._lock:
            self.errors += 1
            newer = self._keys
            self._keys = collections.OrderedDict()
            for kind, keys, seq in messages:
                if kind == "clear":
                    if self._clear is None:
                        self._clear = seq
                    continue
                for key in keys:
                    self._keys[key] = (kind, seq)
            for key, value in newer.items():  # announcements queued meanwhile are newer
                self._keys[key] = value
                self._keys.move_to_end(key)
