"""The I/O executor that runs the legs of parallel and racing operations.

A leg never waits on another pool's future from a pool thread: code that runs on a pool
thread (a leg, an offloaded task) is *marked*, and a policy called from a marked thread runs
its legs inline instead of submitting them. Nested compositions and saturated pools
therefore cannot deadlock.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import typing as t

from tieredcache import lifecycle

__all__ = [
    "default_executor",
    "in_worker",
    "marked",
    "must_run_inline",
    "owns_current_thread",
    "run_inline",
    "start",
    "submit",
]

T = t.TypeVar("T")

_local = threading.local()
_default_lock = threading.Lock()
_default: concurrent.futures.ThreadPoolExecutor | None = None


def in_worker() -> bool:
    """True on a thread that is running a leg or a background task of tieredcache."""
    return getattr(_local, "active", False)


def marked(fn: t.Callable[[], T]) -> t.Callable[[], T]:
    """Wrap ``fn`` so that, while it runs, its thread counts as a worker (:func:`in_worker`)."""

    def run() -> T:
        previous = getattr(_local, "active", False)
        _local.active = True
        try:
            return fn()
        finally:
            _local.active = previous

    return run


def run_inline(fn: t.Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run ``fn`` now, on this thread, and return a finished future holding its outcome."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    try:
        result = fn()
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
    return future


def owns_current_thread(executor: concurrent.futures.Executor) -> bool:
    """True if the calling thread is one of ``executor``'s own workers.

    Such a thread must never wait for work it submits to that executor: with every worker
    busy the work would never start. Known for :class:`~concurrent.futures.ThreadPoolExecutor`.
    """
    current = threading.current_thread()
    threads = getattr(executor, "_threads", None)
    if threads is not None and current in threads:
        return True
    # A worker is added to ``_threads`` only after it has started, so its first task can run
    # before it is listed; its name, set before it starts, tells too. (Another pool with the
    # same prefix only makes this run inline: slower, never wrong.)
    prefix = getattr(executor, "_thread_name_prefix", None)
    return bool(prefix) and current.name.startswith(f"{prefix}_")


def must_run_inline(executor: concurrent.futures.Executor | None) -> bool:
    """True when work for ``executor`` has to run on the calling thread (see :func:`start`)."""
    return executor is None or in_worker() or owns_current_thread(executor)


def start(
    fn: t.Callable[[], T], executor: concurrent.futures.Executor | None
) -> concurrent.futures.Future[T]:
    """Submit ``fn`` to ``executor``, or run it inline on a worker thread (or with no executor)."""
    if executor is None or must_run_inline(executor):
        return run_inline(fn)
    return submit(fn, executor)


def submit(
    fn: t.Callable[[], T], executor: concurrent.futures.Executor
) -> concurrent.futures.Future[T]:
    """:func:`start` for a caller that already knows ``executor`` may take the work (see
    :func:`must_run_inline`)."""
    try:
        future = executor.submit(marked(fn))
    except RuntimeError:
        # The executor is shut down (interpreter exit, or a closed custom executor): the
        # caller still gets its work done, on its own thread.
        return run_inline(fn)
    discard = getattr(fn, "discard", None)
    if discard is not None:
        # Work that keeps bookkeeping (a write's leg) and is cancelled before it runs (its
        # executor shut down with cancel_futures=True) still ends that bookkeeping.
        future.add_done_callback(lambda done: done.cancelled() and discard())
    return future


def default_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide I/O executor, created on first use.

    Its threads are joined at interpreter exit by :mod:`concurrent.futures` itself.
    """
    global _default
    executor = _default
    if executor is not None:
        return executor
    with _default_lock:
        if _default is None:
            workers = min(32, (os.cpu_count() or 1) + 4)
            _default = concurrent.futures.ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="tieredcache-io"
            )
        return _default


def _reset_after_fork() -> None:
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


lifecycle.on_fork(_reset_after_fork, lifecycle.Stage.EXECUTORS)
