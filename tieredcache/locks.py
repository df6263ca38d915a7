"""Per-key single-flight: concurrent callers for one key share one computation."""

from __future__ import annotations

import threading
import typing as t

from tieredcache import lifecycle
from tieredcache.errors import LockTimeoutError

__all__ = ["SingleFlight"]

T = t.TypeVar("T")


class _Call:
    __slots__ = ("done", "error", "result", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.waiters = 0
        self.result: t.Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Runs one call per key at a time; callers that arrive meanwhile share its outcome.

    The first caller for a key (the leader) runs the function on its own thread; later
    callers wait for it and receive its result, or its exception re-raised. The in-flight
    record is removed in a ``finally`` however the call ends, so no waiter hangs on a
    finished call. Thread-safe; one global lock guards only the dictionary of calls, never
    the computation.
    """

    def __init__(self) -> None:
        self._reset_after_fork()
        lifecycle.track(self, lifecycle.Stage.STATE, after_fork="_reset_after_fork")

    def _reset_after_fork(self) -> None:
        # The leaders of the parent's calls do not exist in a forked child.
        self._lock = threading.Lock()
        self._calls: dict[t.Hashable, _Call] = {}

    def run(self, key: t.Hashable, fn: t.Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` for ``key`` unless a call for ``key`` is in flight; then share its result.

        :param timeout: how long a waiter waits for the leader (``None`` = as long as it takes).
        :raises LockTimeoutError: a waiter's ``timeout`` passed before the leader finished.
        """
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                call.waiters += 1
        if not leader:
            if not call.done.wait(timeout):
                raise LockTimeoutError(f"timed out waiting for the computation of {key!r}")
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[no-any-return]
        try:
            call.result = fn()
            return call.result  # type: ignore[no-any-return]
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()

    def waiting(self, key: t.Hashable) -> int:
        """How many callers wait for the call in flight for ``key`` (0 if none)."""
        with self._lock:
            call = self._calls.get(key)
            return 0 if call is None else call.waiters

    def in_flight(self) -> int:
        """How many keys have a call running."""
        with self._lock:
            return len(self._calls)
