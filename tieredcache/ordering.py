"""Per-key ordering of the writes a process makes, so that nothing older lands later.

Every write or delete of a key takes a sequence number from :func:`next_version`. Each of
its layer writes (a *leg*) runs under that key's lock for that layer and is skipped when the
layer already holds a newer write of the key; the lock also makes a leg that is already in
flight to a slow store finish before the next leg for the same key and layer is sent. A
refill is skipped when any write of the key began after the read did, or is still running.

State is kept only for keys with an operation in flight, so memory stays bounded by the
work in progress.
"""

from __future__ import annotations

import os
import threading
import typing as t
import weakref

__all__ = ["KeyState", "Leg", "Ordering"]


class KeyState:
    """What the process knows about one key while operations on it are in flight."""

    __slots__ = ("issued", "locks", "readers", "writers", "written")

    def __init__(self) -> None:
        self.issued = 0  # the newest sequence number issued to a write of this key
        self.written = [0, 0]  # per layer: the sequence number of the write that landed last
        self.writers = 0  # legs not yet finished
        self.readers = 0  # reads that may refill
        self.locks = (threading.Lock(), threading.Lock())


class Ordering:
    """The table of in-flight keys. Thread-safe; its lock guards only the table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, KeyState] = {}
        self.cleared = 0  # sequence number of the last clear()
        self.l1_reset = 0  # sequence number of the last flush of L1 alone (lost invalidations)
        _live.add(self)

    def _reset_after_fork(self) -> None:
        # In a forked child the threads that held these locks, and ran the legs counted
        # here, do not exist: start from a clean table.
        self._lock = threading.Lock()
        self._states = {}

    def begin_write(self, keys: t.Sequence[str], seq: int, legs: int = 2) -> list[KeyState]:
        """Register a write of ``keys`` with ``legs`` legs to come."""
        with self._lock:
            states = []
            for key in keys:
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = KeyState()
                state.writers += legs
                if seq > state.issued:
                    state.issued = seq
                states.append(state)
            return states

    def end_leg(self, keys: t.Sequence[str], states: t.Sequence[KeyState]) -> None:
        """One leg of a write of ``keys`` has finished (or will never run)."""
        with self._lock:
            for key, state in zip(keys, states):
                state.writers -= 1
                self._drop_locked(key, state)

    def begin_read(self, keys: t.Sequence[str]) -> list[tuple[KeyState, int, int]]:
        """Register reads of ``keys``; returns ``(state, issued, cleared)`` snapshots."""
        with self._lock:
            tokens = []
            for key in keys:
                state = self._states.get(key)
                if state is None:
                    state = self._states[key] = KeyState()
                state.readers += 1
                tokens.append((state, state.issued, max(self.cleared, self.l1_reset)))
            return tokens

    def end_read(
        self, keys: t.Sequence[str], tokens: t.Sequence[tuple[KeyState, int, int]]
    ) -> None:
        with self._lock:
            for key, (state, _, _) in zip(keys, tokens):
                state.readers -= 1
                self._drop_locked(key, state)

    def begin_read_one(self, key: str) -> tuple[KeyState, int, int]:
        """:meth:`begin_read` for one key."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = KeyState()
            state.readers += 1
            return (state, state.issued, max(self.cleared, self.l1_reset))

    def end_read_one(self, key: str, token: tuple[KeyState, int, int]) -> None:
        """:meth:`end_read` for one key."""
        state = token[0]
        with self._lock:
            state.readers -= 1
            self._drop_locked(key, state)

    def _drop_locked(self, key: str, state: KeyState) -> None:
        if state.writers == 0 and state.readers == 0 and self._states.get(key) is state:
            del self._states[key]

    def refill_allowed(self, token: tuple[KeyState, int, int]) -> bool:
        """True if no write of the key began since the read did, none runs, and no clear."""
        state, issued, epoch = token
        return (
            state.issued == issued
            and state.writers == 0
            and max(self.cleared, self.l1_reset) == epoch
        )

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)


class Leg:
    """A layer's part of a write: runs at most once, and reports when it is over.

    ``discard()`` is for a leg a policy decided never to run (or cancelled before it
    started), so the bookkeeping still ends.
    """

    __slots__ = ("_done", "_fn", "_lock", "_release")

    def __init__(self, fn: t.Callable[[], object], release: t.Callable[[], None]) -> None:
        self._fn = fn
        self._release = release
        self._done = False
        self._lock = threading.Lock()

    def __call__(self) -> object:
        try:
            return self._fn()
        finally:
            self._finish()

    def discard(self) -> None:
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._release()


_live: weakref.WeakSet[Ordering] = weakref.WeakSet()


def _reset_all_after_fork() -> None:
    for ordering in list(_live):
        ordering._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
