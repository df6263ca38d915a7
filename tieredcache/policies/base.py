"""What a policy is given: the executor, the offload and a way to report failures."""

from __future__ import annotations

import concurrent.futures
import typing as t

from tieredcache.errors import BackendError

if t.TYPE_CHECKING:
    from tieredcache.offload import Offload

__all__ = ["PolicyContext", "tag_tier"]


class PolicyContext:
    """The means a policy runs its legs with.

    :param executor: runs legs in parallel (``None``: everything runs inline).
    :param offload: carries race losers to completion.
    :param l1_local: L1 never waits on I/O, so policies run it on the caller's thread.
    :param report: called as ``report(tier, exc)`` for a layer failure that the policy
        absorbed (the call still returned normally); never silent.
    :param operation: what is being done, for error messages (``"set"``, ``"delete"``).
    """

    __slots__ = ("executor", "l1_local", "offload", "operation", "report")

    def __init__(
        self,
        executor: concurrent.futures.Executor | None,
        offload: Offload | None,
        l1_local: bool,
        report: t.Callable[[str, BaseException], None],
        operation: str = "write",
    ) -> None:
        self.executor = executor
        self.offload = offload
        self.l1_local = l1_local
        self.report = report
        self.operation = operation


def tag_tier(exc: BaseException, tier: str) -> BaseException:
    """Record which tier raised ``exc`` (only the first tag sticks, so nesting keeps the
    innermost layer's name) and return it."""
    if isinstance(exc, BackendError) and exc.tier is None:
        exc.tier = tier
    return exc
