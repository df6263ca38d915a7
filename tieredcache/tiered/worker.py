"""
The retry worker
================

:class:`RetryWorker` runs a composition's background work that waits for L2 to answer
(replays of failed writes, announcements): a non-daemon thread that exists only while there
is work (and a short ``keep_alive`` after it), retries with backoff (50 ms doubling to 1 s)
after an attempt that could not finish, and is woken at once when L2 answers again. It is
stopped, and joined with a bound, by :meth:`RetryWorker.stop` (the composition's
``close()`` and the lifecycle's exit hook); :meth:`RetryWorker.after_fork` forgets the
parent's thread in a forked child.
"""

from __future__ import annotations

import logging
import threading
import typing as t

__all__ = ["RETRY_BACKOFF", "RetryWorker"]

logger = logging.getLogger("tieredcache")

#: The first and the longest pause between two attempts that could not finish.
RETRY_BACKOFF = (0.05, 1.0)


class RetryWorker:
    """Runs ``attempt()`` on a thread of its own while ``pending()`` is true. Thread-safe.

    :param name: the thread's name.
    :param pending: True while there is work (called without any lock of the caller's).
    :param attempt: does one round of the work; True if it finished everything it tried.
    :param due: seconds until the pending work should be done (work that may wait to be
        done together with later work); ``None``: at once. :meth:`wake` cuts the wait short.
    :param keep_alive: seconds the thread waits for more work before it ends (a steady
        trickle of work then needs no new thread per item).
    """

    def __init__(
        self,
        name: str,
        pending: t.Callable[[], bool],
        attempt: t.Callable[[], bool],
        due: t.Callable[[], float] | None = None,
        keep_alive: float = 0.0,
    ) -> None:
        self.name = name
        self.pending = pending
        self.attempt = attempt
        self.due = due
        self.keep_alive = keep_alive
        #: Off: nothing runs in the background (tests drive the work by hand).
        self.background = True
        self.after_fork()

    def after_fork(self) -> None:
        """Start afresh (also in a forked child, where the parent's thread does not exist)."""
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)  # new work for an idle thread
        self._thread: threading.Thread | None = None
        self._closed = False
        self._hurry = False
        self._idle = threading.Event()
        self._idle.set()

    @property
    def thread(self) -> threading.Thread | None:
        """The running thread, if any."""
        return self._thread

    def ensure(self) -> None:
        """Work was queued: make sure a thread will do it."""
        with self._lock:
            self._idle.clear()
            if self._closed or not self.background:
                self._idle.set()
                return
            if self._thread is None:
                thread = threading.Thread(target=self._run, name=self.name, daemon=False)
                self._thread = thread
                thread.start()
            else:
                self._work.notify_all()

    def wake(self) -> None:
        """Try now instead of after the backoff (L2 answers again)."""
        if self.pending():
            self.ensure()
            with self._lock:
                self._hurry = True
                self._wakeup.notify_all()

    def _run(self) -> None:
        first, most = RETRY_BACKOFF
        backoff = pause = 0.0  # the backoff after failed attempts; the wait before the next
        waited = idled = False
        while True:
            with self._lock:
                if pause:
                    self._wakeup.wait(pause)
                    pause = 0.0
                if self._closed or not self.pending():
                    self._idle.set()
                    if self._closed or idled or self.keep_alive <= 0:
                        self._thread = None
                        return
                    self._work.wait(self.keep_alive)  # ensure() or stop() notifies
                    idled = True
                    continue
                idled = False
                if not waited and not self._hurry and self.due is not None:
                    wait = self.due()
                    if wait > 0:
                        self._wakeup.wait(wait)
                        waited = True
                        continue  # closed or woken meanwhile: look again
                waited = self._hurry = False
            try:
                finished = self.attempt()
            except Exception:  # never let the worker die with work queued
                logger.exception("tiered: the background worker %s failed", self.name)
                finished = False
            backoff = 0.0 if finished else min(most, max(first, backoff * 2))
            pause = backoff

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until there is no work left (or no thread to do it); False on timeout."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float) -> None:
        """No more background work; join the thread (at most ``timeout`` seconds)."""
        with self._lock:
            self._closed = True
            self._wakeup.notify_all()
            self._work.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
