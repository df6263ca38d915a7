"""Offloads without threads: one that runs each task at once, one that drops them."""

from __future__ import annotations

import functools
import typing as t
from concurrent import futures

from tieredcache.offload.base import CountingOffload
from tieredcache.offload.keys import ErrorHook
from tieredcache.offload.keys import OffloadKey
from tieredcache.offload.keys import Task

__all__ = ["DisabledOffload", "InlineOffload"]


class InlineOffload(CountingOffload):
    """Runs each task at once on the caller's thread; ``register`` returns when it has finished.

    Keyed deduplication still applies while a task with an equal key runs on another thread.
    :meth:`adopt` waits for the future. A task's exception is logged, counted and passed to
    ``on_error``, never raised to the caller. Thread-safe: one lock guards the counters and the
    in-flight keys, and no task runs under it.

    :param on_error: called as ``on_error(key, exception)`` for each failed task.
    """

    runs_tasks = True

    def __init__(self, *, on_error: ErrorHook | None = None) -> None:
        super().__init__(on_error)

    def register(self, key: OffloadKey, fn: Task) -> bool:
        with self._lock:
            self._check_open_locked()
            if not self._admit_locked(key):
                return False
            self._hold_locked(key, None)
            self._inline += 1
            self._running += 1
            generation = self._generation
        self._run(key, fn, "running", generation)
        return True

    def adopt(self, key: OffloadKey, future: futures.Future[t.Any]) -> bool:
        with self._lock:
            self._check_open_locked()
            if not self._admit_locked(key):
                return False
            self._hold_locked(key, future)
            self._adopted += 1
            self._external += 1
            generation = self._generation
        try:
            futures.wait([future])
        except BaseException:
            # Interrupted while waiting: the accounting happens when the future finishes.
            future.add_done_callback(functools.partial(self._settle_adopted, key, generation))
            raise
        self._settle_adopted(key, generation, future)
        return True

    def close(self, wait: bool = True) -> None:
        if wait:
            self._refuse_inside_task("close(wait=True)")
        with self._lock:
            self._closed = True
            if wait:
                self._idle.wait_for(lambda: self._active_locked() == 0)


class DisabledOffload(CountingOffload):
    """Runs nothing: every task handed to it is dropped without running.

    Use it only when you truly want background work dropped, e.g. a racing write's loser left
    unfinished. ``register`` returns False and counts the task as rejected; ``adopt`` cancels the
    future if it has not started (otherwise it runs on, unwatched) and counts it as rejected.
    ``runs_tasks`` is False, so callers that must not lose work can tell. Thread-safe: one lock
    guards the counters.
    """

    runs_tasks = False

    def __init__(self) -> None:
        super().__init__()

    def register(self, key: OffloadKey, fn: Task) -> bool:
        with self._lock:
            self._check_open_locked()
            self._submitted += 1
            self._rejected += 1
        return False

    def adopt(self, key: OffloadKey, future: futures.Future[t.Any]) -> bool:
        with self._lock:
            self._check_open_locked()
            self._submitted += 1
            self._rejected += 1
        future.cancel()  # outside the lock: it runs the future's callbacks
        return False

    def close(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
