"""Read policies: which layers a read asks, when, and which answer wins.

The error table is the same for every policy: an L1 error counts as a miss (logged and
counted); an L2 error is raised; a hit always wins over the other layer's error; when both
layers fail, :class:`~tieredcache.errors.BothLayersFailed` carries both causes. An expired
entry is never an answer: backends filter it before a policy sees it.

=================  ==================================================================
policy             what it does
=================  ==================================================================
``SequentialRead``  L1; on a miss, L2. L2 is never called on an L1 hit.
``RaceRead``       both at once; the first unexpired hit wins (a local L1 is asked
                   first, on the caller's thread, since it answers in microseconds)
``ParallelRead``   both; when both hit, the entry with the later ``expires_at`` wins
                   (``None``, never expiring, is latest); ties go to L1
=================  ==================================================================
"""

from __future__ import annotations

import concurrent.futures
import typing as t

from tieredcache.entry import Entry
from tieredcache.errors import BothLayersFailed
from tieredcache.executor import must_run_inline
from tieredcache.executor import run_inline
from tieredcache.executor import start
from tieredcache.policies.base import PolicyContext
from tieredcache.policies.base import tag_tier

__all__ = ["ParallelRead", "RaceRead", "ReadPolicy", "SequentialRead"]

Found = dict[str, Entry]
BatchLeg = t.Callable[[list[str]], Found]
# key -> (entry, "l1" | "l2")
Answer = dict[str, tuple[Entry, str]]


class ReadPolicy:
    """Decides the control flow of a read.

    :meth:`execute` receives two legs, each taking a list of keys and returning the
    unexpired entries it found, and returns every hit with the tier that answered.
    Policies hold no per-call state and are thread-safe.
    """

    def execute(self, keys: list[str], l1: BatchLeg, l2: BatchLeg, ctx: PolicyContext) -> Answer:
        """Read ``keys``; return ``{key: (entry, tier)}`` for the hits."""
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _l1_or_miss(
    keys: list[str], l1: BatchLeg, ctx: PolicyContext
) -> tuple[Found, BaseException | None]:
    try:
        return l1(keys), None
    except Exception as exc:
        ctx.report("l1", tag_tier(exc, "l1"))
        return {}, exc


def _both_failed(e1: BaseException, e2: BaseException, ctx: PolicyContext) -> BothLayersFailed:
    return BothLayersFailed(tag_tier(e1, "l1"), tag_tier(e2, "l2"), operation=ctx.operation)


class SequentialRead(ReadPolicy):
    """L1 first; the keys it misses go to L2 (the default)."""

    def execute(self, keys: list[str], l1: BatchLeg, l2: BatchLeg, ctx: PolicyContext) -> Answer:
        found, l1_error = _l1_or_miss(keys, l1, ctx)
        answer: Answer = {k: (e, "l1") for k, e in found.items()}
        missing = [k for k in keys if k not in found]
        if not missing:
            return answer
        try:
            more = l2(missing)
        except Exception as exc:
            if l1_error is not None:
                raise _both_failed(l1_error, exc, ctx) from None
            raise tag_tier(exc, "l2") from None
        answer.update((k, (e, "l2")) for k, e in more.items())
        return answer


def _run_both(
    keys: list[str], l1: BatchLeg, l2: BatchLeg, ctx: PolicyContext
) -> tuple[concurrent.futures.Future[Found], concurrent.futures.Future[Found]]:
    if must_run_inline(ctx.executor):
        return run_inline(lambda: l1(keys)), run_inline(lambda: l2(keys))
    f2 = start(lambda: l2(keys), ctx.executor)
    f1 = run_inline(lambda: l1(keys)) if ctx.l1_local else start(lambda: l1(keys), ctx.executor)
    return f1, f2


def _merge(
    keys: list[str],
    f1: concurrent.futures.Future[Found],
    f2: concurrent.futures.Future[Found],
    ctx: PolicyContext,
    prefer: t.Callable[[Entry, Entry], str],
) -> Answer:
    e1, e2 = f1.exception(), f2.exception()
    found1 = {} if e1 is not None else f1.result()
    found2 = {} if e2 is not None else f2.result()
    if e1 is not None and e2 is not None:
        raise _both_failed(e1, e2, ctx)
    if e1 is not None:
        ctx.report("l1", tag_tier(e1, "l1"))
    answer: Answer = {}
    for key in keys:
        a, b = found1.get(key), found2.get(key)
        if a is not None and b is not None:
            answer[key] = (a, "l1") if prefer(a, b) == "l1" else (b, "l2")
        elif a is not None:
            answer[key] = (a, "l1")
        elif b is not None:
            answer[key] = (b, "l2")
    if e2 is not None and len(answer) < len(keys):
        # Some key has no answer and L2 failed: the miss cannot be trusted.
        raise tag_tier(e2, "l2")
    if e2 is not None:
        ctx.report("l2", tag_tier(e2, "l2"))
    return answer


def _later_expiry(a: Entry, b: Entry) -> str:
    if a.expires_at is None:
        return "l1"
    if b.expires_at is None:
        return "l2"
    return "l1" if a.expires_at >= b.expires_at else "l2"


class ParallelRead(ReadPolicy):
    """Both layers at once; when both hit, the later ``expires_at`` wins, ties to L1."""

    def execute(self, keys: list[str], l1: BatchLeg, l2: BatchLeg, ctx: PolicyContext) -> Answer:
        f1, f2 = _run_both(keys, l1, l2, ctx)
        concurrent.futures.wait([f1, f2])
        return _merge(keys, f1, f2, ctx, _later_expiry)


class RaceRead(ReadPolicy):
    """Both layers at once; the first unexpired hit wins.

    A local L1 is asked first on the caller's thread (it answers before any remote layer
    could), and L2 only for what it missed, so with a local L1 this reads like
    :class:`SequentialRead`. With a remote L1 both legs run in parallel and, per key, the
    answer of the layer that finished first is taken when it is a hit.
    """

    def execute(self, keys: list[str], l1: BatchLeg, l2: BatchLeg, ctx: PolicyContext) -> Answer:
        if ctx.l1_local or must_run_inline(ctx.executor):
            return SequentialRead().execute(keys, l1, l2, ctx)
        f1, f2 = _run_both(keys, l1, l2, ctx)
        done, _ = concurrent.futures.wait([f1, f2], return_when=concurrent.futures.FIRST_COMPLETED)
        first = f1 if f1 in done else f2
        first_tier = "l1" if first is f1 else "l2"
        if first.exception() is None and len(first.result()) == len(keys):
            if first is f2:
                # L1 is still reading: an error it raises later is still reported.
                f1.add_done_callback(
                    lambda f: (
                        f.exception() is not None
                        and ctx.report("l1", tag_tier(t.cast(BaseException, f.exception()), "l1"))
                    )
                )
            return {k: (e, first_tier) for k, e in first.result().items()}
        concurrent.futures.wait([f1, f2])
        first_wins: t.Callable[[Entry, Entry], str] = lambda a, b: first_tier  # noqa: E731
        return _merge(keys, f1, f2, ctx, first_wins)
