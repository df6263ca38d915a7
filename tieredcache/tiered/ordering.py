"""Per-key ordering of the writes a process makes, so that nothing older lands later.

Every write or delete of a key takes a sequence number from :func:`next_version`. Each of
its layer writes (a *leg*) runs under that key's lock for that layer and is skipped when the
layer already holds a newer write of the key; the lock also makes a leg that is already in
flight to a slow store finish before the next leg for the same key and layer is sent. A
refill is skipped when any write of the key began after the read did, or is still running.

A write takes its place with :meth:`Ordering.write`, a context manager returning a
:class:`WriteSlot`: the slot runs each layer's leg (:meth:`WriteSlot.run`) or hands it to a
policy as a :class:`Leg` (:meth:`WriteSlot.leg`), and whatever leg was neither run nor handed
out is ended when the ``with`` block ends, however it ends. No caller counts legs by hand.

A leg waits for the key's lock at most ``timeout`` seconds (the tier's call timeout): with a
frozen store and many threads writing one hot key, each of them waits about one timeout, not
one per thread queued before it. Past it, :class:`KeyBusyError` is raised.

State is kept only for keys with an operation in flight, so memory stays bounded by the
work in progress. The tables are reset in a forked child (see :mod:`tieredcache.lifecycle`).
"""

from __future__ import annotations

import threading
import typing as t

from tieredcache import lifecycle
from tieredcache.entry import next_version
from tieredcache.errors import BackendTimeoutError

if t.TYPE_CHECKING:
    from tieredcache.entry import Entry

__all__ = ["L1", "L2", "KeyBusyError", "KeyState", "Leg", "Ordering", "ReadToken", "WriteSlot"]

#: Layer indices.
L1, L2 = 0, 1


class KeyBusyError(BackendTimeoutError):
    """A leg waited its whole timeout for an earlier write of the same key to finish."""


def _issued(state: KeyState) -> int:
    """What a read's token records of its key: the newest write issued, or -1 (never
    equal, so the read may not refill) while a write runs: the read's L2 answer may predate
    that write, which can finish before the read's refill."""
    return state.issued if state.writers == 0 else -1


#: Guards the creation of a key's locks (once per key state, and only if one is needed).
_LOCKS_MADE = threading.Lock()


def _new_locks_made_lock() -> None:
    # In a forked child a thread that held it does not exist: start with a free one.
    global _LOCKS_MADE
    _LOCKS_MADE = threading.Lock()


lifecycle.on_fork(_new_locks_made_lock)


class KeyState:
    """What the process knows about one key while operations on it are in flight."""

    __slots__ = ("_locks", "issued", "readers", "writers", "written")

    def __init__(self) -> None:
        self.issued = 0  # the newest sequence number issued to a write of this key
        self.written = [0, 0]  # per layer: the sequence number of the write that landed last
        self.writers = 0  # legs not yet finished
        self.readers = 0  # reads that may refill
        self._locks: tuple[threading.Lock, threading.Lock] | None = None

    def lock(self, tier: int) -> threading.Lock:
        """The key's lock for layer ``tier`` (made on first use: a read that never refills
        one key alone needs none)."""
        locks = self._locks
        if locks is None:
            with _LOCKS_MADE:
                locks = self._locks
                if locks is None:
                    locks = self._locks = (threading.Lock(), threading.Lock())
        return locks[tier]


class Ordering:
    """The table of in-flight keys. Thread-safe; its lock guards only the table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, KeyState] = {}
        self.cleared = 0  # sequence number of the last clear()
        self.l1_reset = 0  # sequence number of the last flush of L1 alone (lost invalidations)
        lifecycle.track(self, lifecycle.Stage.STATE, after_fork="_reset_after_fork")

    def write(self, keys: t.Sequence[str], seq: int, legs: int = 2) -> WriteSlot:
        """Take the place of a write of ``keys`` at ``seq`` with ``legs`` legs to come."""
        return WriteSlot(self, keys, self.begin_write(keys, seq, legs), seq, legs)

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

    def begin_read(self, keys: t.Sequence[str]) -> list[ReadToken]:
        """Register reads of ``keys``; returns ``(state, issued, cleared)`` snapshots."""
        with self._lock:
            epoch = max(self.cleared, self.l1_reset)
            states = self._states
            tokens = []
            for key in keys:
                state = states.get(key)
                if state is None:
                    state = states[key] = KeyState()
                state.readers += 1
                tokens.append((state, _issued(state), epoch))
            return tokens

    def end_read(self, keys: t.Sequence[str], tokens: t.Sequence[ReadToken]) -> None:
        with self._lock:
            states = self._states
            for key, (state, _, _) in zip(keys, tokens):
                state.readers -= 1
                if state.readers == 0 and state.writers == 0 and states.get(key) is state:
                    del states[key]

    def begin_read_one(self, key: str) -> ReadToken:
        """:meth:`begin_read` for one key."""
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = KeyState()
            state.readers += 1
            return (state, _issued(state), max(self.cleared, self.l1_reset))

    def end_read_one(self, key: str, token: ReadToken) -> None:
        """:meth:`end_read` for one key."""
        state = token[0]
        with self._lock:
            state.readers -= 1
            self._drop_locked(key, state)

    def _drop_locked(self, key: str, state: KeyState) -> None:
        if state.writers == 0 and state.readers == 0 and self._states.get(key) is state:
            del self._states[key]

    def begin_clear(self) -> int:
        """A clear of every key begins: its sequence number, after which no read that began
        earlier refills L1 (under the table's lock, so a refill in progress lands first)."""
        with self._lock:
            self.cleared = seq = next_version()
            return seq

    def reset_l1(self) -> None:
        """L1 is about to be flushed alone (invalidations may have been lost): no read that
        began earlier refills it."""
        with self._lock:
            self.l1_reset = next_version()

    def busy(self, keys: t.Iterable[str]) -> set[str]:
        """The keys of ``keys`` with a read or write in flight."""
        with self._lock:
            states = self._states
            return {key for key in keys if key in states}

    def refill_batch(
        self,
        token_of: t.Mapping[str, ReadToken],
        entries: t.Mapping[str, Entry],
        store: t.Callable[[dict[str, Entry]], object],
        also: t.Callable[[str], bool] | None,
    ) -> int:
        """Store the ``entries`` whose read may still refill (see :meth:`refill_allowed`)
        and for which ``also(key)`` holds (unless ``None``), with ``store``, all under the
        table's lock: a write that begins meanwhile waits for it and lands after. For an
        in-process L1, where this costs less than a lock per key. How many were stored."""
        with self._lock:
            # refill_allowed() inlined (a tenth of a batch read's time), the epoch read once.
            epoch = max(self.cleared, self.l1_reset)
            items = {}
            for key, entry in entries.items():
                state, issued, began = token_of[key]
                if (
                    state.issued == issued
                    and state.writers == 0
                    and began == epoch
                    and (also is None or also(key))
                ):
                    items[key] = entry
            if items:
                store(items)
            return len(items)

    def refill_one(
        self,
        key: str,
        token: ReadToken,
        entry: Entry,
        store: t.Callable[[str, Entry], object],
        pending: t.Callable[[str], bool],
    ) -> bool:
        """:meth:`refill_batch` for one key: ``store(key, entry)`` under the table's lock,
        unless the read may no longer refill or ``pending(key)``; True if stored."""
        with self._lock:
            if not self.refill_allowed(token) or pending(key):
                return False
            store(key, entry)
            return True

    def refill_allowed(self, token: ReadToken) -> bool:
        """True if no write of the key began since the read did, none runs, and no clear."""
        state, issued, epoch = token
        return (
            state.issued == issued
            and state.writers == 0
            and max(self.cleared, self.l1_reset) == epoch
        )

    def shareable(self, key: str, token: ReadToken) -> bool:
        """True if another caller may take the answer of the read of ``key`` that began
        with ``token``: it may still refill (:meth:`refill_allowed`), and it is still
        registered, so that a write begun since would show in its key's state. (A read
        that ended, as a read race's slower leg can, is no longer told of new writes.)"""
        return self._states.get(key) is token[0] and self.refill_allowed(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)


ReadToken = tuple[KeyState, int, int]


class WriteSlot:
    """One write's place in the ordering of its keys (see :meth:`Ordering.write`).

    Use it as a context manager; each leg is either run here (:meth:`run`) or handed out
    (:meth:`leg`), and the legs left over are ended when the block exits.
    """

    __slots__ = ("_left", "_ordering", "keys", "seq", "states")

    def __init__(
        self,
        ordering: Ordering,
        keys: t.Sequence[str],
        states: list[KeyState],
        seq: int,
        legs: int,
    ) -> None:
        self._ordering = ordering
        self.keys = list(keys)
        self.states = states
        self.seq = seq
        self._left = legs

    def __enter__(self) -> WriteSlot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End every leg that was neither run nor handed out."""
        while self._left > 0:
            self.end_leg()

    def end_leg(self) -> None:
        """End one leg that was not handed out (it ran here, or will never run)."""
        if self._left <= 0:
            raise RuntimeError("more legs ended than the write registered")
        self._left -= 1
        self._ordering.end_leg(self.keys, self.states)

    def run(
        self,
        tier: int,
        op: t.Callable[[list[str]], object],
        *,
        mark: bool = True,
        supersede: bool = True,
        timeout: float | None = None,
    ) -> object:
        """Run one leg now, on this thread: see :meth:`guarded`; the leg ends however it ends."""
        try:
            return self.guarded(tier, op, mark=mark, supersede=supersede, timeout=timeout)
        finally:
            self.end_leg()

    def leg(
        self,
        tier: int,
        op: t.Callable[[list[str]], object],
        *,
        timeout: float | None = None,
    ) -> Leg:
        """Hand one leg out (to a policy, maybe another thread); it ends when run or discarded."""
        return self.custom_leg(lambda: self.guarded(tier, op, timeout=timeout))

    def custom_leg(self, fn: t.Callable[[], object]) -> Leg:
        """Hand out one leg that runs ``fn`` (which calls :meth:`guarded` itself)."""
        if self._left <= 0:
            raise RuntimeError("more legs handed out than the write registered")
        self._left -= 1
        keys, states, ordering = self.keys, self.states, self._ordering
        return Leg(fn, lambda: ordering.end_leg(keys, states))

    def guarded(
        self,
        tier: int,
        op: t.Callable[[list[str]], object],
        *,
        mark: bool = True,
        supersede: bool = True,
        timeout: float | None = None,
    ) -> object:
        """Run ``op`` on the keys whose layer ``tier`` holds nothing newer than this write.

        With ``supersede=False`` the operation runs whatever landed meanwhile (an atomic
        read-modify-write such as ``incr`` or ``add`` decides at the store itself).

        :raises KeyBusyError: a key's lock was not free within ``timeout`` seconds.
        """
        keys, states, seq = self.keys, self.states, self.seq
        if len(keys) == 1:
            return self._guarded_one(tier, op, mark, supersede, timeout)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        taken: list[threading.Lock] = []
        try:
            for i in order:
                lock = states[i].lock(tier)
                if timeout is None:
                    lock.acquire()
                else:
                    _acquire_within(lock, timeout, keys[i], tier)
                taken.append(lock)
            if supersede and seq < self._ordering.cleared:
                return None
            live = [keys[i] for i in order if not supersede or states[i].written[tier] <= seq]
            if not live:
                return None
            result = op(live)
            if mark:
                for i in order:
                    if states[i].written[tier] < seq:
                        states[i].written[tier] = seq
            return result
        finally:
            for lock in reversed(taken):
                lock.release()

    def _guarded_one(
        self,
        tier: int,
        op: t.Callable[[list[str]], object],
        mark: bool,
        supersede: bool,
        timeout: float | None,
    ) -> object:
        """:meth:`guarded` for a write of one key."""
        state = self.states[0]
        seq = self.seq
        lock = state.lock(tier)
        if timeout is None:
            lock.acquire()
        else:
            _acquire_within(lock, timeout, self.keys[0], tier)
        try:
            written = state.written
            if supersede and (seq < self._ordering.cleared or written[tier] > seq):
                return None
            result = op(self.keys)
            if mark and written[tier] < seq:
                written[tier] = seq
            return result
        finally:
            lock.release()


def _acquire_within(lock: threading.Lock, timeout: float, key: str, tier: int) -> None:
    """Take a write's lock of ``key`` for layer ``tier``, waiting at most ``timeout``."""
    if not lock.acquire(timeout=max(timeout, 0.0)):
        raise KeyBusyError(
            f"an earlier write of {key!r} held the key for {timeout:g}s",
            backend="l2" if tier == L2 else "l1",
        )


class Leg:
    """A layer's part of a write: runs at most once, and reports when it is over.

    ``discard()`` is for a leg a policy decided never to run (or cancelled before it
    started), so the bookkeeping still ends.
    """

    __slots__ = ("_fn", "_pending", "_release")

    def __init__(self, fn: t.Callable[[], object], release: t.Callable[[], None]) -> None:
        self._fn = fn
        self._release = release
        self._pending = [True]  # emptied by the first finish: list.pop is atomic

    def __call__(self) -> object:
        try:
            return self._fn()
        finally:
            self._finish()

    def discard(self) -> None:
        self._finish()

    def _finish(self) -> None:
        try:
            self._pending.pop()
        except IndexError:  # already finished
            return
        self._release()
