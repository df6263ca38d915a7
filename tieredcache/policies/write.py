"""Write policies: in what order and on which threads a write reaches the two layers.

=========================  ===========================================  ==========================
policy                     a normal return means                        on failure
=========================  ===========================================  ==========================
``SequentialWrite``        both layers hold the value                   L1 fails: raise, L2 is not
                                                                        called. L2 fails: raise;
                                                                        L1 keeps the value.
``OptimisticParallelWrite``  both legs finished; at least one layer     both fail:
                           holds the value; a one-layer failure is      ``BothLayersFailed``
                           reported and counted
``RaceWrite``              at least one layer holds the value; returns  first finisher failed: wait
                           at the first success                         for the other; both fail:
                                                                        ``BothLayersFailed``
=========================  ===========================================  ==========================
"""

from __future__ import annotations

import concurrent.futures
import enum
import typing as t

from tieredcache.errors import BothLayersFailed
from tieredcache.errors import OffloadError
from tieredcache.executor import must_run_inline
from tieredcache.executor import run_inline
from tieredcache.executor import start
from tieredcache.executor import submit
from tieredcache.policies.base import PolicyContext
from tieredcache.policies.base import tag_tier

__all__ = [
    "LoserPolicy",
    "OptimisticParallelWrite",
    "RaceWrite",
    "SequentialWrite",
    "WritePolicy",
]

Leg = t.Callable[[], object]


class WritePolicy:
    """Decides the control flow of a write; the layers' work is done by the two legs.

    A leg is a zero-argument callable that writes one layer and raises on failure.
    Policies hold no per-call state and are thread-safe.
    """

    def execute(self, l1: Leg, l2: Leg, ctx: PolicyContext) -> None:
        """Run the legs; return normally when the policy's promise holds, else raise."""
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SequentialWrite(WritePolicy):
    """L1, then L2, on the caller's thread; a normal return means both layers hold the value.

    If L1 fails the error is raised and L2 is never called. If L2 fails its error is
    raised and L1 keeps the new value (the layers then disagree until the next write,
    delete or expiry of the key).
    """

    def execute(self, l1: Leg, l2: Leg, ctx: PolicyContext) -> None:
        try:
            l1()
        except Exception as exc:
            _discard(l2)
            raise tag_tier(exc, "l1") from None
        try:
            l2()
        except Exception as exc:
            raise tag_tier(exc, "l2") from None


def _discard(leg: Leg) -> None:
    """Tell a leg it will never run (legs that keep bookkeeping offer ``discard``)."""
    discard = getattr(leg, "discard", None)
    if discard is not None:
        discard()


def _settle(e1: BaseException | None, e2: BaseException | None, ctx: PolicyContext) -> None:
    """Both legs finished: raise if both failed, report a single failure."""
    if e1 is not None and e2 is not None:
        raise BothLayersFailed(tag_tier(e1, "l1"), tag_tier(e2, "l2"), operation=ctx.operation)
    if e1 is not None:
        ctx.report("l1", tag_tier(e1, "l1"))
    if e2 is not None:
        ctx.report("l2", tag_tier(e2, "l2"))


def _outcome(future: concurrent.futures.Future[object]) -> BaseException | None:
    """The leg's error, or ``None``. A leg whose executor cancelled it before it ran (a shut
    down executor) failed: its layer was not written."""
    try:
        return future.exception()
    except concurrent.futures.CancelledError:
        return OffloadError("the leg was cancelled before it ran: its executor was shut down")


class OptimisticParallelWrite(WritePolicy):
    """Both legs at once; returns when both have finished. With an in-process L1 (its leg
    takes microseconds) both run on the caller's thread, L1 first, which ends as soon and
    spares a hand-off to a worker thread.

    A normal return means at least one layer holds the value. A failure of one layer is
    reported (counted in ``stats()`` and passed to ``on_partial_failure``); when both fail,
    :class:`~tieredcache.errors.BothLayersFailed` carries both causes, in the order (l1, l2).
    """

    def execute(self, l1: Leg, l2: Leg, ctx: PolicyContext) -> None:
        if ctx.l1_local or must_run_inline(ctx.executor):
            # An in-process L1 takes microseconds: both legs on this thread, one after the
            # other, end when they would have in parallel, without handing L2 to a worker.
            try:
                f1 = run_inline(l1)
            except BaseException:  # an interrupt, not a failure of the leg
                _discard(l2)
                raise
            _settle(_outcome(f1), _outcome(run_inline(l2)), ctx)
            return
        f2 = start(l2, ctx.executor)
        f1 = start(l1, ctx.executor)
        _settle(_outcome(f1), _outcome(f2), ctx)


class LoserPolicy(enum.Enum):
    """What :class:`RaceWrite` does with the leg that has not finished when it returns."""

    #: Hand it to the offload, which carries it to completion and records its outcome.
    OFFLOAD = "offload"
    #: Cancel it if it has not started; otherwise let it finish and ignore it.
    DROP = "drop"


class RaceWrite(WritePolicy):
    """Both legs at once; returns at the first success.

    A normal return means at least one layer holds the value. If the first leg to finish
    failed, the policy waits for the other; if both fail it raises
    :class:`~tieredcache.errors.BothLayersFailed`. The losing leg is handed to the offload
    (``LoserPolicy.OFFLOAD``: after ``drain()`` its layer holds the value unless its write
    failed, and that failure is reported) or dropped (``LoserPolicy.DROP``).

    A local L1 runs on the caller's thread, so a race against a remote L2 costs one
    in-process write; with ``LoserPolicy.OFFLOAD`` it runs first (it cannot lose to a
    remote L2) and L2's leg is handed out when it is done, so that the worker carrying it
    does not compete with the caller for the interpreter meanwhile. Called from a worker
    thread (a nested composition), both legs run inline, one after the other.

    :param loser: what to do with the losing leg.
    """

    def __init__(self, loser: LoserPolicy = LoserPolicy.OFFLOAD) -> None:
        if not isinstance(loser, LoserPolicy):
            raise TypeError(f"loser must be a LoserPolicy, not {loser!r}")
        self.loser = loser

    def __repr__(self) -> str:
        return f"RaceWrite(loser=LoserPolicy.{self.loser.name})"

    def execute(self, l1: Leg, l2: Leg, ctx: PolicyContext) -> None:
        if must_run_inline(ctx.executor):
            _settle(_outcome(run_inline(l1)), _outcome(run_inline(l2)), ctx)
            return
        if ctx.l1_local and self.loser is LoserPolicy.OFFLOAD:
            self._local_first(l1, l2, ctx)
            return
        f2 = start(l2, ctx.executor)
        if ctx.l1_local:
            f1 = run_inline(l1)
        else:
            f1 = start(l1, ctx.executor)
        legs = {f1: ("l1", l1), f2: ("l2", l2)}
        errors: dict[str, BaseException] = {}
        pending = set(legs)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            succeeded = False
            for future in done:
                tier = legs[future][0]
                exc = _outcome(future)
                if exc is None:
                    succeeded = True
                else:
                    errors[tier] = tag_tier(exc, tier)
            if succeeded:
                for other in pending:
                    self._lose(other, *legs[other], ctx)
                for failed_tier, failure in errors.items():
                    ctx.report(failed_tier, failure)
                return
        raise BothLayersFailed(errors["l1"], errors["l2"], operation=ctx.operation)

    def _local_first(self, l1: Leg, l2: Leg, ctx: PolicyContext) -> None:
        """The race with an in-process L1 and an offloaded loser: L1's leg, on this thread,
        finishes before a remote L2's could, so it runs first, and L2's leg is then handed to
        the executor and adopted by the offload without waiting for it. Only when L1 failed
        does the caller wait, for L2's outcome."""
        try:
            f1 = run_inline(l1)
        except BaseException:  # an interrupt, not a failure of the leg: L2 never starts
            _discard(l2)
            raise
        f2 = submit(l2, t.cast(concurrent.futures.Executor, ctx.executor))
        failure = _outcome(f1)
        if failure is None:
            self._lose(f2, "l2", l2, ctx)
            return
        other = _outcome(f2)
        if other is None:
            ctx.report("l1", tag_tier(failure, "l1"))
            return
        raise BothLayersFailed(
            tag_tier(failure, "l1"), tag_tier(other, "l2"), operation=ctx.operation
        )

    def _lose(
        self, future: concurrent.futures.Future[object], tier: str, leg: Leg, ctx: PolicyContext
    ) -> None:
        def report_failure(done: concurrent.futures.Future[object]) -> None:
            failure = _outcome(done)  # a leg cancelled before it ran is a failed one too
            if failure is not None:
                ctx.report(tier, tag_tier(failure, tier))

        if self.loser is LoserPolicy.DROP:
            if future.cancel():
                _discard(leg)
            return
        future.add_done_callback(report_failure)
        assert ctx.offload is not None, "RaceWrite(OFFLOAD) needs an offload"
        from tieredcache.offload import OffloadKey

        ctx.offload.adopt(OffloadKey.auto(f"race_write_{tier}_loser"), future)
