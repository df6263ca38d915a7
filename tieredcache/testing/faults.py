"""Fault injection for policy tests: a backend wrapper that fails or hangs on command, and an
executor that runs its queued work only when told to.
"""

from __future__ import annotations

import concurrent.futures
import threading
import typing as t
import weakref

from tieredcache.backends.base import Backend
from tieredcache.entry import Entry
from tieredcache.errors import BackendUnavailableError
from tieredcache.serializers import EntryCodec

__all__ = ["FaultyBackend", "ManualExecutor"]

#: Operation groups a fault can target.
READS = frozenset({"get"})
WRITES = frozenset({"set", "add", "delete", "incr", "touch", "clear"})

#: One lock per wrapped store, shared by every wrapper of it: a swap is atomic.
_STORE_LOCKS: weakref.WeakKeyDictionary[Backend, threading.RLock] = weakref.WeakKeyDictionary()
_STORE_LOCKS_GUARD = threading.Lock()


def _store_lock(inner: Backend) -> threading.RLock:
    with _STORE_LOCKS_GUARD:
        lock = _STORE_LOCKS.get(inner)
        if lock is None:
            lock = _STORE_LOCKS[inner] = threading.RLock()
        return lock


class FaultyBackend(Backend):
    """Wraps a backend; each operation may be made to fail or to wait for a gate.

    Operations are named ``get``, ``set``, ``add``, ``delete``, ``incr``, ``touch`` and
    ``clear`` (batch forms count as their single form; ``swap_entries`` is a ``set``).
    Every call is recorded in :attr:`calls` as ``(operation, keys)``. Thread-safe.

    Like the Redis backend, the wrapper answers ``swap_entries`` (a set that reports the
    version of each entry it replaced, see :mod:`tieredcache.tiered.coherence`), so that
    compositions over it announce steps on a backplane; writes through every wrapper of
    one store are serialized, so a swap is atomic among them.

    :param inner: the backend that really stores.
    :param name: a name for errors and the call log.
    """

    def __init__(self, inner: Backend, name: str = "faulty") -> None:
        super().__init__(timer=inner.timer)
        self.inner = inner
        self.label = name
        self.local = inner.local
        self.serializer = getattr(inner, "serializer", None)
        #: Encodes the entries a swap reports (the inner store's codec, if it has one).
        self.codec: EntryCodec = getattr(inner, "codec", None) or EntryCodec()
        self._store = _store_lock(inner)
        self._lock = threading.Lock()
        self._failing: dict[str, BaseException | None] = {}
        self._gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    # -- controls ---------------------------------------------------------------------

    def fail(self, *operations: str, error: BaseException | None = None) -> None:
        """Make ``operations`` (all when none are named) raise ``error``."""
        with self._lock:
            for op in operations or (*READS, *WRITES):
                self._failing[op] = error

    def recover(self, *operations: str) -> None:
        """Stop failing ``operations`` (all when none are named)."""
        with self._lock:
            for op in operations or list(self._failing):
                self._failing.pop(op, None)

    def hold(self, *operations: str) -> threading.Event:
        """Make ``operations`` wait until the returned event is set; ``entered[op]`` is set
        when a call has arrived at the gate."""
        gate = threading.Event()
        with self._lock:
            for op in operations:
                self._gates[op] = gate
                self.entered[op] = threading.Event()
        return gate

    def release(self, *operations: str) -> None:
        """Open the gates of ``operations`` (all when none are named)."""
        with self._lock:
            names = operations or tuple(self._gates)
            gates = [self._gates.pop(op) for op in names if op in self._gates]
        for gate in gates:
            gate.set()

    def count(self, operation: str) -> int:
        """How many calls of ``operation`` were made."""
        with self._lock:
            return sum(1 for op, _ in self.calls if op == operation)

    # -- the wrapper ------------------------------------------------------------------

    def _enter(self, operation: str, keys: t.Iterable[str]) -> None:
        with self._lock:
            self.calls.append((operation, tuple(keys)))
            gate = self._gates.get(operation)
            entered = self.entered.get(operation)
            failing = operation in self._failing
            error = self._failing.get(operation)
        if entered is not None:
            entered.set()
        if gate is not None and not gate.wait(30):
            raise BackendUnavailableError(
                f"{self.label}: {operation} held for 30 s", backend=self.label
            )
        if failing:
            raise error or BackendUnavailableError(
                f"{self.label}: injected {operation} failure", backend=self.label
            )

    def get_entry(self, key: str) -> Entry | None:
        self._enter("get", [key])
        return self.inner.get_entry(key)

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        keys = list(keys)
        self._enter("get", keys)
        return self.inner.get_entries(keys)

    def set_entry(self, key: str, entry: Entry) -> None:
        self._enter("set", [key])
        with self._store:
            self.inner.set_entry(key, entry)

    def set_entries(self, items: t.Mapping[str, Entry]) -> None:
        self._enter("set", list(items))
        with self._store:
            self.inner.set_entries(items)

    def swap_entries(self, items: t.Mapping[str, Entry]) -> dict[str, tuple[bytes, int | None]]:
        """Store ``items``; per key, its encoded entry and the version it replaced."""
        self._enter("set", list(items))
        swap = getattr(self.inner, "swap_entries", None)
        if swap is not None:
            swapped: dict[str, tuple[bytes, int | None]] = swap(items)
            return swapped
        with self._store:
            before = self.inner.get_entries(list(items))
            self.inner.set_entries(items)
        return {
            key: (self.codec.encode(entry), None if key not in before else before[key].version)
            for key, entry in items.items()
        }

    def add_entry(self, key: str, entry: Entry) -> bool:
        self._enter("add", [key])
        with self._store:
            return self.inner.add_entry(key, entry)

    def delete(self, key: str) -> bool:
        self._enter("delete", [key])
        with self._store:
            return self.inner.delete(key)

    def delete_many(self, keys: t.Iterable[str]) -> int:
        keys = list(keys)
        self._enter("delete", keys)
        with self._store:
            return self.inner.delete_many(keys)

    def delete_each(self, keys: t.Iterable[str]) -> list[str]:
        keys = list(keys)
        self._enter("delete", keys)
        with self._store:
            return self.inner.delete_each(keys)

    def incr(self, key: str, delta: int = 1) -> int:
        self._enter("incr", [key])
        with self._store:
            return self.inner.incr(key, delta)

    def touch_entry(self, key: str, expires_at: float | None) -> bool:
        self._enter("touch", [key])
        with self._store:
            return self.inner.touch_entry(key, expires_at)

    def clear(self) -> None:
        self._enter("clear", [])
        with self._store:
            self.inner.clear()

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> dict[str, t.Any]:
        return self.inner.stats()

    def _check_invariants(self) -> None:
        check = getattr(self.inner, "_check_invariants", None)
        if check is not None:
            check()

    def __repr__(self) -> str:
        return f"<FaultyBackend {self.label} over {self.inner!r}>"


class ManualExecutor(concurrent.futures.Executor):
    """Queues submitted work; runs it only when :meth:`run` is called, in any order.

    Lets a test decide when a racing write's losing leg lands. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[concurrent.futures.Future[t.Any], t.Callable[[], t.Any]]] = []

    def submit(
        self, fn: t.Callable[..., t.Any], /, *args: t.Any, **kwargs: t.Any
    ) -> concurrent.futures.Future[t.Any]:
        """Queue ``fn(*args, **kwargs)``; it runs when :meth:`run` picks it."""
        future: concurrent.futures.Future[t.Any] = concurrent.futures.Future()
        with self._lock:
            self._queue.append((future, lambda: fn(*args, **kwargs)))
        return future

    @property
    def pending(self) -> int:
        """How many queued items have not run (cancelled ones included until run)."""
        with self._lock:
            return len(self._queue)

    def run(self, index: int = 0) -> bool:
        """Run the queued item at ``index`` (oldest first); False if there is none."""
        with self._lock:
            if not self._queue:
                return False
            future, fn = self._queue.pop(index % len(self._queue))
        if not future.set_running_or_notify_cancel():
            return True
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return True

    def run_all(self) -> int:
        """Run everything queued, oldest first, including work queued meanwhile."""
        count = 0
        while self.run(0):
            count += 1
        return count

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Cancel what is queued when ``cancel_futures`` is true; nothing else to stop."""
        if cancel_futures:
            with self._lock:
                queued, self._queue = self._queue, []
            for future, _ in queued:
                future.cancel()
