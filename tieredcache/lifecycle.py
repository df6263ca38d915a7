"""
Process lifecycle
=================

One place for what every process-wide resource must do when the process forks and when the
interpreter exits. Executors, offloads, per-key ordering tables, connection pools, backplanes,
single-flight tables and the shared caches of the framework integrations all register here,
and nowhere else calls :func:`os.register_at_fork` or :mod:`atexit`.

**Fork.** In a child, only the thread that called :func:`os.fork` exists. A lock another
thread held at the fork is held forever, a pool's worker threads are gone, and a socket is
shared with the parent. Every registered resource is reset in the child before ``fork()``
returns there, in :class:`Stage` order: locks and tables first, then executors and offloads
(so that later stages may submit work), then connections, then subscribers (which start new
threads).

**Exit.** Hooks run from :mod:`threading`'s exit hooks, which the interpreter calls *before*
it joins non-daemon threads and before :mod:`concurrent.futures` stops accepting work, so a
hook may still drain a pool or stop a background thread; plain :mod:`atexit` is the fallback.
They run in :class:`Stage` order too: caches flush their pending work (replays,
announcements, offloaded writes) before the threads that carry it are stopped.

Resources register either a plain callback (:func:`on_fork`, :func:`on_exit`) or an object
(:func:`track`), which is held weakly: a resource that is garbage-collected simply drops out.
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import threading
import typing as t
import weakref

__all__ = ["Stage", "forks", "on_exit", "on_fork", "track"]

logger = logging.getLogger("tieredcache")


class Stage(enum.IntEnum):
    """The order in which hooks run, lowest first (at fork and at exit alike)."""

    #: Locks and in-process tables (ordering, single-flight, memory tiers).
    STATE = 10
    #: Thread pools: the I/O executor and the offloads.
    EXECUTORS = 20
    #: Connections and pools to servers.
    CONNECTIONS = 30
    #: Compositions: replay of failed writes, pending announcements.
    CACHES = 40
    #: Background subscribers and publishers (they start threads of their own).
    SUBSCRIBERS = 50


class _Tracked(t.NamedTuple):
    ref: weakref.ReferenceType[t.Any]
    method: str


_lock = threading.Lock()
_fork_hooks: list[tuple[int, int, t.Callable[[], None] | _Tracked]] = []
_before_hooks: list[tuple[int, int, t.Callable[[], None] | _Tracked]] = []
_parent_hooks: list[tuple[int, int, t.Callable[[], None] | _Tracked]] = []
_exit_hooks: list[tuple[int, int, t.Callable[[], None] | _Tracked]] = []
_order = 0
_forks = 0


def forks() -> int:
    """How many times this process was created by a fork since the module was imported."""
    return _forks


def on_fork(
    callback: t.Callable[[], None],
    stage: Stage = Stage.STATE,
    *,
    before: t.Callable[[], None] | None = None,
    after_in_parent: t.Callable[[], None] | None = None,
) -> None:
    """Call ``callback()`` in every forked child, before ``fork()`` returns there.

    ``before`` runs in the parent just before the fork (to take locks so that the child
    inherits a consistent state) and ``after_in_parent`` in the parent just after it (to
    release them); before-hooks run in stage order, parent hooks in reverse.
    """
    _add(_fork_hooks, callback, stage)
    if before is not None:
        _add(_before_hooks, before, stage)
    if after_in_parent is not None:
        _add(_parent_hooks, after_in_parent, stage)


def on_exit(callback: t.Callable[[], None], stage: Stage = Stage.CACHES) -> None:
    """Call ``callback()`` once at interpreter exit, before non-daemon threads are joined."""
    _add(_exit_hooks, callback, stage)


def track(
    resource: object,
    stage: Stage,
    *,
    after_fork: str | None = None,
    at_exit: str | None = None,
) -> None:
    """Register ``resource`` (held weakly): call its method named ``after_fork`` in a forked
    child and the one named ``at_exit`` at interpreter exit."""
    if after_fork is not None:
        _add(_fork_hooks, _Tracked(weakref.ref(resource), after_fork), stage)
    if at_exit is not None:
        _add(_exit_hooks, _Tracked(weakref.ref(resource), at_exit), stage)


def _add(
    hooks: list[tuple[int, int, t.Callable[[], None] | _Tracked]],
    hook: t.Callable[[], None] | _Tracked,
    stage: Stage,
) -> None:
    global _order
    with _lock:
        _order += 1
        hooks.append((int(stage), _order, hook))
        hooks.sort(key=lambda item: (item[0], item[1]))
        # Forget the tracked objects that are gone, so the lists stay bounded.
        hooks[:] = [h for h in hooks if not isinstance(h[2], _Tracked) or h[2].ref() is not None]


def _run(
    hooks: list[tuple[int, int, t.Callable[[], None] | _Tracked]],
    what: str,
    *,
    reverse: bool = False,
) -> None:
    for _, _, hook in reversed(list(hooks)) if reverse else list(hooks):
        if isinstance(hook, _Tracked):
            resource = hook.ref()
            if resource is None:
                continue
            fn = getattr(resource, hook.method)
        else:
            fn = hook
        try:
            fn()
        except Exception:  # one broken resource must not stop the others
            logger.exception("tieredcache: %s hook %r failed", what, fn)


def _before_fork() -> None:
    _lock.acquire()
    _run(_before_hooks, "before-fork")


def _after_fork_in_parent() -> None:
    _run(_parent_hooks, "after-fork", reverse=True)
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _forks
    _lock = threading.Lock()
    _forks += 1
    _run(_fork_hooks, "after-fork")


_exited = False


def _at_exit() -> None:
    global _exited
    if _exited:
        return
    _exited = True
    _run(_exit_hooks, "exit")


def _register_exit_hook() -> None:
    # threading runs its exit hooks last-registered first: importing the pool module first
    # makes ours run before concurrent.futures stops accepting work.
    import concurrent.futures.thread  # noqa: F401

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_at_exit)
        except RuntimeError:  # pragma: no cover - the interpreter is already shutting down
            pass
    # Also a plain atexit hook: it runs when the threading hook could not be registered,
    # and is a no-op after it.
    atexit.register(_at_exit)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
_register_exit_hook()
