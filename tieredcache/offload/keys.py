"""Offload keys and counters: what identifies a background task, and what an offload counts."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import typing as t

from tieredcache import lifecycle

__all__ = ["ErrorHook", "OffloadKey", "OffloadStats", "Task"]

Task = t.Callable[[], object]
"""A background task: a zero-argument callable."""

ErrorHook = t.Callable[["OffloadKey", BaseException], None]
"""``on_error(key, exception)``: called for each failed task."""

_Variant = t.Literal["keyed", "explicit", "auto"]
_VARIANTS = ("keyed", "explicit", "auto")

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


def _reset_after_fork() -> None:
    global _auto_ids_lock
    _auto_ids_lock = threading.Lock()


lifecycle.on_fork(_reset_after_fork, lifecycle.Stage.STATE)
