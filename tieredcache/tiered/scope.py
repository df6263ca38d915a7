"""The L2 operation a thread is in.

An operation of a :class:`~tieredcache.TieredCache` (a ``set``, a ``get_or_set`` that reads,
loads and writes, ...) may call its L2 several times. :class:`OperationScope` keeps, per
thread, when the outermost operation began and whether L2 already failed for availability
during it, so that the :class:`~.l2gate.L2Gate` fails the rest of the operation fast and
bounds every wait by one timeout from the operation's start.
"""

from __future__ import annotations

import threading
import time

__all__ = ["OperationScope"]


class OperationScope:
    """A context manager, entered for each operation (nested entries join the outer one).

    One instance serves every thread: its state lives in a :class:`threading.local`, which
    :meth:`after_fork` replaces in a forked child.
    """

    __slots__ = ("local",)

    def __init__(self) -> None:
        self.local = threading.local()

    def after_fork(self) -> None:
        self.local = threading.local()

    def __enter__(self) -> None:
        local = self.local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        if depth == 0:
            local.failed = None
            local.started = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        local = self.local
        # Never below 0: a child forked inside an operation unwinds levels it never entered.
        depth = max(getattr(local, "depth", 1) - 1, 0)
        local.depth = depth
        if depth == 0:
            local.failed = None

    @property
    def depth(self) -> int:
        """How many operations this thread is in (0: none)."""
        depth: int = getattr(self.local, "depth", 0)
        return depth

    @property
    def failed(self) -> BaseException | None:
        """The availability failure of L2 during this thread's operation, if any."""
        return getattr(self.local, "failed", None)

    def fail(self, exc: BaseException) -> None:
        """L2 failed for availability: the rest of this thread's operation fails fast."""
        if getattr(self.local, "depth", 0):
            self.local.failed = exc

    @property
    def started(self) -> float | None:
        """When (``time.monotonic``) this thread's outermost operation began, or ``None``."""
        if not getattr(self.local, "depth", 0):
            return None
        started: float | None = getattr(self.local, "started", None)
        return started
