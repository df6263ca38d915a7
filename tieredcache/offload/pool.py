"""The thread-pool offload, and the process-wide one."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import typing as t
from concurrent import futures

# Importing ThreadPoolExecutor loads concurrent.futures.thread, which registers that module's own
# exit hook before the lifecycle's, so the exit drain runs while executors still accept work.
from concurrent.futures import ThreadPoolExecutor

from tieredcache import lifecycle
from tieredcache.errors import ConfigurationError
from tieredcache.errors import OffloadError
from tieredcache.offload.base import CountingOffload
from tieredcache.offload.base import live_offloads
from tieredcache.offload.keys import ErrorHook
from tieredcache.offload.keys import OffloadKey
from tieredcache.offload.keys import Task

__all__ = ["ThreadPoolOffload", "default_offload", "set_default_offload"]

logger = logging.getLogger("tieredcache.offload")

_OVERFLOW_RULES = ("inline", "reject")


class ThreadPoolOffload(CountingOffload):
    """Runs tasks on a bounded pool of worker threads that it owns.

    At most ``max_workers`` tasks run on the workers and at most ``max_pending`` wait for one.
    **Overflow rule:** when ``max_pending`` tasks are already waiting, ``overflow="inline"`` (the
    default) runs the new task at once on the caller's thread, which is backpressure and loses
    nothing; ``overflow="reject"`` refuses it (``register`` returns False, counted as
    ``rejected``). With ``max_pending=0`` no task is ever queued: each one runs inline or is
    rejected.

    Keyed and explicit keys are deduplicated atomically, and a key is free again as soon as its
    task ends, however it ends. A task's exception is counted as failed, passed to ``on_error``
    and logged on the ``tieredcache.offload`` logger; it never stops a worker. The log is
    rate-limited: one record (with its traceback) per kind of task and type of error every ten
    seconds, the next one saying how many were suppressed, so a failing tier does not log a
    traceback for each of its thousand background writes.

    The pool is a :class:`concurrent.futures.ThreadPoolExecutor` (no daemon threads) created on
    first use. :meth:`drain` and ``close(wait=True)`` cannot be called from inside one of this
    offload's own tasks (they would wait for themselves) and raise :class:`RuntimeError` there.
    Before the interpreter exits every live instance is drained. A forked child starts with no
    pool, a fresh lock and the parent's counters, the parent's in-flight tasks counted as
    cancelled.

    Thread-safe: one lock guards the counters and the in-flight keys; no task runs under it.

    :param max_workers: the most tasks running on workers at once (at least 1).
    :param max_pending: the most accepted tasks waiting for a worker (at least 0).
    :param overflow: ``"inline"`` or ``"reject"``: what to do with a task when the queue is full.
    :param on_error: called as ``on_error(key, exception)`` for each failed task, on the thread
        that ran it; its own exception is logged and swallowed.
    :param thread_name_prefix: the prefix of the worker threads' names.
    :raises ConfigurationError: an argument is out of range.
    """

    runs_tasks = True

    def __init__(
        self,
        max_workers: int = 4,
        max_pending: int = 1024,
        *,
        overflow: str = "inline",
        on_error: ErrorHook | None = None,
        thread_name_prefix: str = "tieredcache-offload",
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be an int >= 1, not {max_workers!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0:
            raise ConfigurationError(f"max_pending must be an int >= 0, not {max_pending!r}")
        if overflow not in _OVERFLOW_RULES:
            choices = " or ".join(map(repr, _OVERFLOW_RULES))
            raise ConfigurationError(f"overflow must be {choices}, not {overflow!r}")
        self._max_workers = max_workers
        self._max_pending = max_pending
        self._overflow = overflow
        self._thread_name_prefix = thread_name_prefix
        self._executor: ThreadPoolExecutor | None = None
        # Tasks handed to the executor and not started: id -> (key, future). The future is
        # None only while submit() runs, under the lock.
        self._queued: dict[int, tuple[OffloadKey, futures.Future[t.Any] | None]] = {}
        self._task_ids = itertools.count()
        super().__init__(on_error)

    @property
    def max_workers(self) -> int:
        """The most tasks running on workers at once."""
        return self._max_workers

    @property
    def max_pending(self) -> int:
        """The most accepted tasks waiting for a worker."""
        return self._max_pending

    @property
    def overflow(self) -> str:
        """``"inline"`` or ``"reject"``: what happens to a task when the queue is full."""
        return self._overflow

    def register(self, key: OffloadKey, fn: Task) -> bool:
        with self._lock:
            self._check_open_locked()
            if not self._admit_locked(key):
                return False
            if self._pending < self._max_pending:
                if self._submit_locked(key, fn):
                    return True
            elif self._overflow == "reject":
                self._rejected += 1
                return False
            # The queue is full (or the interpreter is exiting): run it here, now.
            self._hold_locked(key, None)
            self._inline += 1
            self._external += 1
            generation = self._generation
        self._run(key, fn, "external", generation)
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
        # The future finishes on its own executor and its done callback does the accounting, so
        # none of our threads blocks on another pool's future. Added outside the lock: on a
        # future that is already done, the callback runs right here.
        future.add_done_callback(functools.partial(self._settle_adopted, key, generation))
        return True

    def close(self, wait: bool = True) -> None:
        if wait:
            self._refuse_inside_task("close(wait=True)")
        with self._lock:
            self._closed = True
            executor = self._executor
            if wait:
                self._idle.wait_for(lambda: self._active_locked() == 0)
            else:
                self._cancel_queued_locked()
        if executor is not None:
            executor.shutdown(wait=wait)

    # -- internals ---------------------------------------------------------------------------------

    def _describe(self) -> str:
        return (
            f"max_workers={self._max_workers} max_pending={self._max_pending} "
            f"overflow={self._overflow!r} "
        )

    def _submit_locked(self, key: OffloadKey, fn: Task) -> bool:
        """Queue ``fn`` on the pool; False when the interpreter is exiting and it must run here.

        Runs under the lock, so a task that starts (and ends) at once finds its bookkeeping in
        place, and ``close()`` cannot slip between the check for closed and the submission.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix=self._thread_name_prefix
            )
        task_id = next(self._task_ids)
        self._queued[task_id] = (key, None)
        try:
            future = self._executor.submit(self._run_queued, task_id, key, fn)
        except RuntimeError as exc:
            del self._queued[task_id]
            # Once concurrent.futures' own exit hook has run, executors refuse new work ("cannot
            # schedule new futures after [interpreter] shutdown"); the task then runs inline
            # rather than being lost. That refusal comes before anything is queued, so the task
            # cannot run twice. Any other error (no thread could be started) is the caller's.
            if str(exc).startswith("cannot schedule new futures"):
                return False
            self._submitted -= 1  # not accepted: the caller gets the error instead
            raise OffloadError(f"could not queue offload task {key!r}: {exc}") from exc
        self._queued[task_id] = (key, future)
        self._hold_locked(key, future)
        self._pending += 1
        return True

    def _run_queued(self, task_id: int, key: OffloadKey, fn: Task) -> None:
        with self._lock:
            if self._queued.pop(task_id, None) is None:
                return  # written off (cancelled, or refused by submit): must not run
            self._pending -= 1
            self._running += 1
            generation = self._generation
        self._run(key, fn, "running", generation)

    def _cancel_queued_locked(self) -> None:
        for task_id, (key, future) in list(self._queued.items()):
            # cancel() succeeds only on a future no worker has picked up, and a worker cannot
            # pick it up afterwards, so each task is settled exactly once, here or in _run.
            if future is not None and future.cancel():
                del self._queued[task_id]
                self._pending -= 1
                self._cancelled += 1
                if key.dedup:
                    self._inflight.pop(key, None)
        if self._active_locked() == 0:
            self._idle.notify_all()

    def _reset_after_fork(self) -> None:
        super()._reset_after_fork()
        # The workers do not exist in the child; a new pool is created on first use.
        self._executor = None
        self._queued.clear()


# -- the process-wide offload ----------------------------------------------------------------------

_default_lock = threading.Lock()
_default: ThreadPoolOffload | None = None


def default_offload() -> ThreadPoolOffload:
    """The process-wide offload (4 workers, 10 000 pending), created on first use.

    It is drained before the interpreter exits, with every other live :class:`ThreadPoolOffload`.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = ThreadPoolOffload(max_workers=4, max_pending=10_000)
        return _default


def set_default_offload(offload: ThreadPoolOffload | None) -> ThreadPoolOffload | None:
    """Make ``offload`` the process-wide offload; ``None`` goes back to creating one on first use.

    :returns: the previous process-wide offload, if any; it is not closed.
    """
    global _default
    with _default_lock:
        previous, _default = _default, offload
        return previous


def _reset_default_lock_after_fork() -> None:
    global _default_lock
    _default_lock = threading.Lock()


def _drain_at_exit() -> None:
    # Drain, not close: non-daemon threads still run after this hook, and a task they register
    # later runs inline (see _submit_locked) instead of failing.
    offloads = [o for o in live_offloads() if isinstance(o, ThreadPoolOffload)]
    for offload in offloads:
        try:
            offload.drain()
        except Exception:
            logger.warning("could not drain %r at exit", offload, exc_info=True)


def _hold_default_lock() -> None:
    _default_lock.acquire()


def _release_default_lock() -> None:
    _default_lock.release()


# The default lock is taken before the registry lock everywhere (default_offload() creates an
# offload, which registers itself): an earlier stage keeps that order across the fork.
lifecycle.on_fork(
    _reset_default_lock_after_fork,
    lifecycle.Stage.STATE,
    before=_hold_default_lock,
    after_in_parent=_release_default_lock,
)
# The lifecycle's exit hook runs before concurrent.futures stops taking work.
lifecycle.on_exit(_drain_at_exit, lifecycle.Stage.EXECUTORS)
