"""Background tasks: deduplicated, bounded, counted, and drained before the interpreter exits.

An *offload* runs zero-argument callables that nobody waits for: a racing write's losing leg, a
stale-while-revalidate refresh, a refill. Each task carries an :class:`OffloadKey`; keyed and
explicit keys are deduplicated while a task with the same identity is in flight.

The offloads:

- :class:`ThreadPoolOffload` runs tasks on its own bounded pool of worker threads;
- :class:`InlineOffload` runs each task at once on the caller's thread;
- :class:`DisabledOffload` runs nothing and drops what it is given.

:func:`default_offload` returns a process-wide :class:`ThreadPoolOffload`. Before the interpreter
exits, every live :class:`ThreadPoolOffload` is drained, so no accepted task is lost.

Every offload keeps counters that always add up (see :class:`OffloadStats`)::

    submitted == completed + failed + cancelled + deduplicated + rejected + active
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import typing as t
import weakref
from concurrent import futures

# Importing ThreadPoolExecutor loads concurrent.futures.thread, which registers that module's own
# exit hook. Ours is registered later (bottom of this module), and those hooks run in reverse
# order, so our drain runs while the executors still accept work.
from concurrent.futures import ThreadPoolExecutor

from tieredcache import lifecycle
from tieredcache.errors import ConfigurationError
from tieredcache.errors import OffloadError
from tieredcache.ratelog import RateLimitedLog

__all__ = [
    "DisabledOffload",
    "InlineOffload",
    "Offload",
    "OffloadKey",
    "OffloadStats",
    "ThreadPoolOffload",
    "default_offload",
    "set_default_offload",
]

logger = logging.getLogger("tieredcache.offload")

_Task = t.Callable[[], object]
_ErrorHook = t.Callable[["OffloadKey", BaseException], None]
_Variant = t.Literal["keyed", "explicit", "auto"]
_Slot = t.Literal["running", "external"]
_Outcome = t.Literal["completed", "failed", "cancelled"]
_O = t.TypeVar("_O", bound="Offload")

_VARIANTS = ("keyed", "explicit", "auto")
_OVERFLOW_RULES = ("inline", "reject")

_auto_ids = itertools.count(1)
_auto_ids_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class OffloadKey:
    """The identity of a background task.

    Build keys with :meth:`keyed`, :meth:`explicit` or :meth:`auto`. Keyed and explicit keys are
    deduplicated: while a task is in flight, another task with an equal key is not run. Equality
    is over ``(variant, kind, id)``, so the same cache key under two kinds names two tasks. Auto
    keys are never deduplicated. Instances are immutable, so they are safe to share between
    threads.

    :param variant: ``"keyed"``, ``"explicit"`` or ``"auto"``.
    :param kind: what the task does, e.g. ``"race_write_l2_loser"`` or ``"refill"``.
    :param id: the cache key (keyed), the caller's id (explicit) or a process-wide serial
        number (auto).
    """

    variant: _Variant
    kind: str
    id: str

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, not {self.variant!r}")
        if not isinstance(self.kind, str) or not isinstance(self.id, str):
            raise TypeError("OffloadKey kind and id must be str")

    @classmethod
    def keyed(cls, cache_key: str, kind: str) -> OffloadKey:
        """A deduplicated key for work on one cache key, such as a refresh of ``cache_key``."""
        return cls("keyed", kind, cache_key)

    @classmethod
    def explicit(cls, kind: str, id: str) -> OffloadKey:
        """A deduplicated key whose identity the caller chooses."""
        return cls("explicit", kind, id)

    @classmethod
    def auto(cls, kind: str) -> OffloadKey:
        """A key that is never deduplicated; each call gets a fresh process-wide id."""
        with _auto_ids_lock:
            serial = next(_auto_ids)
        return cls("auto", kind, str(serial))

    @property
    def dedup(self) -> bool:
        """Whether tasks with this key are deduplicated (keyed and explicit keys)."""
        return self.variant != "auto"

    def __repr__(self) -> str:
        if self.variant == "keyed":
            return f"OffloadKey.keyed({self.id!r}, kind={self.kind!r})"
        if self.variant == "explicit":
            return f"OffloadKey.explicit({self.kind!r}, id={self.id!r})"
        return f"OffloadKey.auto({self.kind!r}) #{self.id}"


@dataclasses.dataclass(frozen=True)
class OffloadStats:
    """A snapshot of an offload's counters, taken under the lock that updates them.

    At every snapshot
    ``submitted == completed + failed + cancelled + deduplicated + rejected + active`` and
    ``active == pending + running + external``. A snapshot is immutable, so it is safe to share
    between threads.

    :ivar submitted: calls to ``register`` and ``adopt`` (not counting those refused after close).
    :ivar completed: tasks that returned normally.
    :ivar failed: tasks that raised; each was logged and passed to ``on_error``.
    :ivar cancelled: accepted tasks that never ran: cancelled by ``close(wait=False)``, adopted
        futures cancelled by their owner, or tasks that were in flight in the parent when the
        process forked.
    :ivar deduplicated: tasks not run because a task with an equal key was in flight.
    :ivar rejected: tasks refused: the queue was full under ``overflow="reject"``, or the offload
        is a :class:`DisabledOffload`.
    :ivar active: accepted tasks that have not finished.
    :ivar pending: accepted tasks waiting for a worker.
    :ivar running: tasks running on this offload's workers (for :class:`InlineOffload`: on
        callers' threads).
    :ivar external: tasks in flight outside the workers: overflow tasks running on a caller's
        thread, and adopted futures running on another executor.
    :ivar inline: how many tasks ran on the caller's thread instead of a worker (for
        :class:`ThreadPoolOffload`, because the queue was full).
    :ivar adopted: how many futures were accepted through ``adopt``.
    """

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    deduplicated: int = 0
    rejected: int = 0
    active: int = 0
    pending: int = 0
    running: int = 0
    external: int = 0
    inline: int = 0
    adopted: int = 0


class Offload:
    """The protocol of an offload: something that carries background tasks to completion.

    Implementations are thread-safe: every method may be called from any thread.

    ``runs_tasks`` is True when the offload really runs what it is given; a caller that must not
    lose work (a racing write's loser) checks it and runs the work itself otherwise.
    """

    #: True for offloads that run the tasks they accept, False for :class:`DisabledOffload`.
    runs_tasks: t.ClassVar[bool]

    def register(self, key: OffloadKey, fn: _Task) -> bool:
        """Accept ``fn`` to run in the background under ``key``.

        :param key: the task's identity; keyed and explicit keys are deduplicated.
        :param fn: a zero-argument callable; its return value is ignored, its exception is logged
            and counted.
        :returns: True when accepted, False when deduplicated or rejected.
        :raises OffloadError: the offload is closed.
        """
        raise NotImplementedError

    def adopt(self, key: OffloadKey, future: futures.Future[t.Any]) -> bool:
        """Take responsibility for ``future``, already running on some other executor.

        The future is counted as active until it finishes, then as completed, failed or
        cancelled; its exception is logged and counted; :meth:`drain` waits for it.

        :returns: True when accepted; False when deduplicated or rejected, and then the caller
            keeps responsibility for the future.
        :raises OffloadError: the offload is closed.
        """
        raise NotImplementedError

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every accepted task has finished.

        :param timeout: seconds to wait at most; ``None`` waits as long as it takes.
        :returns: True when nothing is active, False on timeout (nothing is cancelled).
        :raises RuntimeError: called from inside one of this offload's own tasks, which cannot
            wait for itself.
        """
        raise NotImplementedError

    def close(self, wait: bool = True) -> None:
        """Stop accepting tasks; safe to call more than once.

        :param wait: True runs every accepted task to completion first; False cancels the tasks
            that have not started and returns at once.
        :raises RuntimeError: ``wait=True`` from inside one of this offload's own tasks.
        """
        raise NotImplementedError

    def stats(self) -> OffloadStats:
        """A consistent snapshot of the counters."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        raise NotImplementedError

    def __enter__(self: _O) -> _O:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(wait=True)


class _CountingOffload(Offload):
    """The accounting shared by the concrete offloads; thread-safe through one lock.

    Subclasses set their own attributes before calling ``__init__``, which publishes the
    instance to the fork handler.
    """

    def __init__(self, on_error: _ErrorHook | None = None) -> None:
        self._on_error = on_error
        self._log = RateLimitedLog(logger=logger)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Per thread: how many of this offload's tasks the thread is running right now.
        self._local = threading.local()
        self._closed = False
        # Bumped in a forked child: tasks begun before the fork were already written off.
        self._generation = 0
        # In-flight keyed and explicit keys; a check and its insert share one critical section.
        self._inflight: dict[OffloadKey, futures.Future[t.Any] | None] = {}
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._cancelled = 0
        self._deduplicated = 0
        self._rejected = 0
        self._pending = 0
        self._running = 0
        self._external = 0
        self._inline = 0
        self._adopted = 0
        _track(self)

    # -- public ------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> OffloadStats:
        with self._lock:
            return OffloadStats(
                submitted=self._submitted,
                completed=self._completed,
                failed=self._failed,
                cancelled=self._cancelled,
                deduplicated=self._deduplicated,
                rejected=self._rejected,
                active=self._active_locked(),
                pending=self._pending,
                running=self._running,
                external=self._external,
                inline=self._inline,
                adopted=self._adopted,
            )

    def drain(self, timeout: float | None = None) -> bool:
        self._refuse_inside_task("drain()")
        with self._idle:
            return self._idle.wait_for(lambda: self._active_locked() == 0, timeout)

    def __repr__(self) -> str:
        s = self.stats()
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} {self._describe()}{state} submitted={s.submitted} "
            f"completed={s.completed} failed={s.failed} cancelled={s.cancelled} "
            f"deduplicated={s.deduplicated} rejected={s.rejected} pending={s.pending} "
            f"running={s.running} external={s.external} inline={s.inline} adopted={s.adopted}>"
        )

    # -- accounting helpers ------------------------------------------------------------------------

    def _describe(self) -> str:
        return ""

    def _active_locked(self) -> int:
        return self._pending + self._running + self._external

    def _check_open_locked(self) -> None:
        if self._closed:
            raise OffloadError("offload is closed")

    def _admit_locked(self, key: OffloadKey) -> bool:
        """Count a submission; False (and counted) when an equal key is in flight."""
        self._submitted += 1
        if key.dedup and key in self._inflight:
            self._deduplicated += 1
            return False
        return True

    def _hold_locked(self, key: OffloadKey, future: futures.Future[t.Any] | None) -> None:
        if key.dedup:
            self._inflight[key] = future

    def _in_task(self) -> bool:
        return bool(getattr(self._local, "depth", 0))

    def _refuse_inside_task(self, what: str) -> None:
        # Waiting for every task from inside one would wait for itself; waiting for "all but
        # this one" still deadlocks once every worker does it while tasks are queued.
        if self._in_task():
            raise RuntimeError(f"{what} cannot wait from inside one of this offload's tasks")

    def _run(self, key: OffloadKey, fn: _Task, slot: _Slot, generation: int) -> None:
        """Run ``fn`` on this thread, report its failure, and settle its accounting."""
        local = self._local
        local.depth = getattr(local, "depth", 0) + 1
        outcome: _Outcome = "failed"
        try:
            try:
                fn()
            except Exception as exc:
                self._report(key, exc)
            except BaseException as exc:
                # KeyboardInterrupt or SystemExit: counted and reported, then let through.
                self._report(key, exc)
                raise
            else:
                outcome = "completed"
        finally:
            local.depth -= 1
            self._settle(key, slot, outcome, generation)

    def _report(self, key: OffloadKey, exc: BaseException) -> None:
        # Counted by the caller every time; logged (with a traceback) once per kind of task
        # and kind of error per interval, so a failing tier does not log each of its writes.
        self._log.warning(
            f"failed:{key.kind}:{type(exc).__name__}",
            "offload task %r failed",
            key,
            exc_info=exc,
        )
        hook = self._on_error
        if hook is not None:
            try:
                hook(key, exc)
            except Exception as hook_error:
                self._log.warning(
                    f"on_error:{key.kind}:{type(hook_error).__name__}",
                    "on_error hook raised for offload task %r",
                    key,
                    exc_info=hook_error,
                )

    def _settle_adopted(
        self, key: OffloadKey, generation: int, future: futures.Future[t.Any]
    ) -> None:
        outcome: _Outcome = "failed"
        try:
            if future.cancelled():
                outcome = "cancelled"
            else:
                exc = future.exception()
                if exc is None:
                    outcome = "completed"
                else:
                    self._report(key, exc)
        finally:
            self._settle(key, "external", outcome, generation)

    def _settle(self, key: OffloadKey, slot: _Slot, outcome: _Outcome, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # began before a fork; the child already counted it as cancelled
            if slot == "running":
                self._running -= 1
            else:
                self._external -= 1
            if outcome == "completed":
                self._completed += 1
            elif outcome == "failed":
                self._failed += 1
            else:
                self._cancelled += 1
            if key.dedup:
                self._inflight.pop(key, None)
            if self._active_locked() == 0:
                self._idle.notify_all()

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh lock; what was in flight in the parent is cancelled here."""
        self._lock = threading.Lock()
        self._log = RateLimitedLog(logger=logger)
        self._idle = threading.Condition(self._lock)
        self._generation += 1
        self._cancelled += self._active_locked()
        self._pending = self._running = self._external = 0
        self._inflight.clear()


class ThreadPoolOffload(_CountingOffload):
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
        on_error: _ErrorHook | None = None,
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

    def register(self, key: OffloadKey, fn: _Task) -> bool:
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

    def _submit_locked(self, key: OffloadKey, fn: _Task) -> bool:
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

    def _run_queued(self, task_id: int, key: OffloadKey, fn: _Task) -> None:
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


class InlineOffload(_CountingOffload):
    """Runs each task at once on the caller's thread; ``register`` returns when it has finished.

    Keyed deduplication still applies while a task with an equal key runs on another thread.
    :meth:`adopt` waits for the future. A task's exception is logged, counted and passed to
    ``on_error``, never raised to the caller. Thread-safe: one lock guards the counters and the
    in-flight keys, and no task runs under it.

    :param on_error: called as ``on_error(key, exception)`` for each failed task.
    """

    runs_tasks = True

    def __init__(self, *, on_error: _ErrorHook | None = None) -> None:
        super().__init__(on_error)

    def register(self, key: OffloadKey, fn: _Task) -> bool:
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


class DisabledOffload(_CountingOffload):
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

    def register(self, key: OffloadKey, fn: _Task) -> bool:
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


# -- every live offload: fork and exit handling ----------------------------------------------------

_live_lock = threading.Lock()
_live: weakref.WeakSet[_CountingOffload] = weakref.WeakSet()
_forking: list[_CountingOffload] = []


def _track(offload: _CountingOffload) -> None:
    with _live_lock:
        _live.add(offload)


def _before_fork() -> None:
    # Hold every lock across the fork so the child copies consistent counters. Order: the
    # default lock, the registry lock, then the offloads, as everywhere else.
    _default_lock.acquire()
    _live_lock.acquire()
    _forking[:] = list(_live)
    for offload in _forking:
        offload._lock.acquire()


def _after_fork_in_parent() -> None:
    for offload in reversed(_forking):
        offload._lock.release()
    _forking.clear()
    _live_lock.release()
    _default_lock.release()


def _after_fork_in_child() -> None:
    global _default_lock, _live_lock, _auto_ids_lock
    for offload in _forking:
        offload._reset_after_fork()
    _forking.clear()
    _default_lock = threading.Lock()
    _live_lock = threading.Lock()
    _auto_ids_lock = threading.Lock()


def _drain_at_exit() -> None:
    # Drain, not close: non-daemon threads still run after this hook, and a task they register
    # later runs inline (see _submit_locked) instead of failing.
    with _live_lock:
        offloads = [offload for offload in _live if isinstance(offload, ThreadPoolOffload)]
    for offload in offloads:
        try:
            offload.drain()
        except Exception:
            logger.warning("could not drain %r at exit", offload, exc_info=True)


# The lifecycle's exit hook runs before concurrent.futures stops taking work.
lifecycle.on_fork(
    _after_fork_in_child,
    lifecycle.Stage.EXECUTORS,
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
)
lifecycle.on_exit(_drain_at_exit, lifecycle.Stage.EXECUTORS)
