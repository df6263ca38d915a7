"""The offload protocol and the accounting every offload shares."""

from __future__ import annotations

import logging
import threading
import typing as t
import weakref
from concurrent import futures

from tieredcache import lifecycle
from tieredcache.errors import OffloadError
from tieredcache.offload.keys import ErrorHook
from tieredcache.offload.keys import OffloadKey
from tieredcache.offload.keys import OffloadStats
from tieredcache.offload.keys import Task
from tieredcache.ratelog import RateLimitedLog

__all__ = ["CountingOffload", "Offload", "live_offloads"]

logger = logging.getLogger("tieredcache.offload")

_Slot = t.Literal["running", "external"]
_Outcome = t.Literal["completed", "failed", "cancelled"]
_O = t.TypeVar("_O", bound="Offload")


class Offload:
    """The protocol of an offload: something that carries background tasks to completion.

    Implementations are thread-safe: every method may be called from any thread.

    ``runs_tasks`` is True when the offload really runs what it is given; a caller that must not
    lose work (a racing write's loser) checks it and runs the work itself otherwise.
    """

    #: True for offloads that run the tasks they accept, False for :class:`DisabledOffload`.
    runs_tasks: t.ClassVar[bool]

    def register(self, key: OffloadKey, fn: Task) -> bool:
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


class CountingOffload(Offload):
    """The accounting shared by the concrete offloads; thread-safe through one lock.

    Subclasses set their own attributes before calling ``__init__``, which publishes the
    instance to the fork handler.
    """

    def __init__(self, on_error: ErrorHook | None = None) -> None:
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

    def _run(self, key: OffloadKey, fn: Task, slot: _Slot, generation: int) -> None:
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


# -- every live offload: fork and exit handling ----------------------------------------------------

_live_lock = threading.Lock()
_live: weakref.WeakSet[CountingOffload] = weakref.WeakSet()
_forking: list[CountingOffload] = []


def _track(offload: CountingOffload) -> None:
    with _live_lock:
        _live.add(offload)


def _before_fork() -> None:
    # Hold every lock across the fork so the child copies consistent counters. Order: the
    # registry lock, then the offloads, as everywhere else.
    _live_lock.acquire()
    _forking[:] = list(_live)
    for offload in _forking:
        offload._lock.acquire()


def _after_fork_in_parent() -> None:
    for offload in reversed(_forking):
        offload._lock.release()
    _forking.clear()
    _live_lock.release()


def _after_fork_in_child() -> None:
    global _live_lock
    for offload in _forking:
        offload._reset_after_fork()
    _forking.clear()
    _live_lock = threading.Lock()


def live_offloads() -> list[CountingOffload]:
    """Every offload of this process that has not been garbage-collected."""
    with _live_lock:
        return list(_live)


lifecycle.on_fork(
    _after_fork_in_child,
    lifecycle.Stage.EXECUTORS,
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
)
