"""
Reads through a composition
===========================

:class:`Reader` runs the part of a read that goes past L1: the L2 read through the
:class:`~.l2gate.L2Gate` (shared with the other callers missing the same key, see
:mod:`.readflight`), the read policy for batches, the counters, and the refill of L1, which
is skipped when a write of the key began since the read did, is still running, or waits for
replay. An L1 hit is one call: the L1's hit reader (:meth:`Reader.hit_reader`), which
takes the place of :meth:`TieredCache.get <tieredcache.TieredCache.get>` on the instance
and hands it what is not a hit.
"""

from __future__ import annotations

import inspect
import logging
import typing as t

from tieredcache.entry import Entry
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BothLayersFailed
from tieredcache.errors import ValueTooLargeError
from tieredcache.policies.base import PolicyContext
from tieredcache.policies.base import tag_tier
from tieredcache.policies.read import ReadPolicy
from tieredcache.stats import TIERED_INDEX
from tieredcache.stats import Counters
from tieredcache.tiered.ordering import L1
from tieredcache.tiered.ordering import ReadToken

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.tiered.cache import TieredCache
    from tieredcache.tiered.l2gate import L2Gate
    from tieredcache.tiered.ordering import Ordering
    from tieredcache.tiered.readflight import Flight
    from tieredcache.tiered.readflight import ReadFlights
    from tieredcache.tiered.tags import TagIndex

__all__ = ["Reader"]

logger = logging.getLogger("tieredcache")

_IDX = TIERED_INDEX
_HITS, _MISSES, _ERRORS = _IDX["hits"], _IDX["misses"], _IDX["errors"]
_L1_HITS, _L2_HITS = _IDX["l1_hits"], _IDX["l2_hits"]
_REFILLS, _REFILLS_SKIPPED = _IDX["refills"], _IDX["refills_skipped"]
_REFILL_ERRORS = _IDX["refill_errors"]


class Reader:
    """Reads past L1 for one :class:`~tieredcache.TieredCache`. Thread-safe.

    :param cache: the composition (its clock, executor and L1 cap).
    :param refills: whether an L2 hit is copied into L1.
    :param report: ``report(tier, exc)`` for a layer failure a read absorbed.
    """

    def __init__(
        self,
        cache: TieredCache,
        *,
        l1: Backend,
        gate: L2Gate,
        ordering: Ordering,
        flights: ReadFlights,
        counters: Counters,
        tag_index: TagIndex,
        policy: ReadPolicy,
        refills: bool,
        report: t.Callable[[str, BaseException], None],
    ) -> None:
        self.cache = cache
        self.l1 = l1
        self.gate = gate
        self.ordering = ordering
        self.flights = flights
        self.counters = counters
        self.tag_index = tag_index
        self.policy = policy
        self.refills = refills
        self.report = report
        self.ctx = PolicyContext(None, None, l1.local, report, "get")
        # Counted with incrementers: one atomic call per lookup.
        self.count_l1_hit = counters.incrementer("hits", "l1_hits")
        self.count_l2_hit = counters.incrementer("hits", "l2_hits")
        self.count_miss = counters.incrementer("misses")
        self.count_refill = counters.incrementer("refills")
        self.count_refill_skipped = counters.incrementer("refills_skipped")

    def from_l2(self, key: str, l1_error: BaseException | None) -> Entry | None:
        """L1 missed (or failed on) ``key``: read it from L2 (or share a read in flight of
        it, see :mod:`.readflight`) and refill L1."""
        ordering = self.ordering
        token = ordering.begin_read_one(key)
        flight, leader = self.flights.join(key, token)
        entry: Entry | None = None
        try:
            try:
                if leader:
                    try:
                        entry = self.gate.read([key]).get(key)
                        if entry is not None and entry.tags and not self.tag_index.valid(entry):
                            entry = None
                    except BaseException as exc:
                        leader = False
                        self.flights.land(key, flight, None, exc)
                        raise
                else:
                    entry = self.shared_answer(key, flight)
            except Exception as exc:
                if l1_error is not None:
                    raise BothLayersFailed(l1_error, tag_tier(exc, "l2"), operation="get") from None
                raise tag_tier(exc, "l2") from None
        except BaseException:
            self.counters.slot()[_ERRORS] += 1
            ordering.end_read_one(key, token)
            raise
        try:
            if entry is None:
                self.count_miss()
            else:
                self.count_l2_hit()
                # An L1 that failed to read may hold a newer value it could not show.
                if leader and self.refills and l1_error is None:
                    self.refill_l1({key: token}, {key: entry})
        finally:
            if leader:
                self.flights.land(key, flight, entry)
            ordering.end_read_one(key, token)
        return entry

    def hit_reader(self, rest: t.Callable[[str, t.Any], t.Any]) -> t.Callable[..., t.Any] | None:
        """A ``get(key, default=None)`` that answers an L1 hit in one call, from the L1's
        :meth:`~tieredcache.backends.base.Backend.hit_reader` (``None``: L1 offers none);
        ``rest(key, default)`` answers what is not a hit or a plain miss."""
        counts = self.counters.incrementer("hits", "l1_hits")  # called by the reader alone
        reader = self.l1.hit_reader(counts, rest, self.after_l1_miss)
        if reader is not None:  # help(cache.get) reads as the method's
            reader.__doc__ = inspect.getdoc(rest)
            reader.__name__ = reader.__qualname__ = "get"
        return reader

    def after_l1_miss(self, key: str, default: t.Any) -> t.Any:
        """What ``get(key, default)`` returns once L1 held no entry for ``key`` (a valid
        key; the L1's hit reader counted the miss)."""
        entry = self.from_l2(key, None)
        return default if entry is None else entry.value

    def shared_answer(self, key: str, flight: Flight) -> Entry | None:
        """Another caller's L2 read of ``key``: its answer, waiting at most the L2 timeout."""
        if flight.wait(self.gate.lock_timeout()):
            return flight.answer_for(key)
        exc = BackendTimeoutError(
            f"the shared l2 read of {key!r} did not finish in time", backend="l2"
        )
        if not self.gate.fail_open:
            raise exc
        self.gate.absorb("read", "read", [key], exc)
        return None

    def shared_l2_leg(
        self, token_of: t.Mapping[str, ReadToken], shared_keys: set[str]
    ) -> t.Callable[[list[str]], dict[str, Entry]]:
        """The L2 leg of a batch read: lead the keys nobody reads yet, then share the rest
        (added to ``shared_keys``: their leader refills them)."""

        def read(wanted: list[str]) -> dict[str, Entry]:
            reads = self.flights
            led, batch, shared = reads.join_many(wanted, token_of)
            found: dict[str, Entry] = {}
            if led:
                try:
                    found = self.read_l2(led)
                except BaseException as exc:
                    reads.land_many(led, batch, {}, exc)
                    raise
                reads.land_many(led, batch, found)
                if shared or batch.waiters:
                    # Its waiters read the batch's answers: the policy gets a copy to change.
                    found = dict(found)
            # Only now wait for others: a batch never waits while it leads (no cycles).
            shared_keys.update(shared)
            for key, flight in shared.items():
                entry = self.shared_answer(key, flight)
                if entry is not None:
                    found[key] = entry
            return found

        return read

    def through(self, keys: list[str]) -> dict[str, Entry]:
        """Read ``keys`` through the read policy, count, and refill L1 from L2's answers."""
        tokens = self.ordering.begin_read(keys)
        failures: list[BaseException] = []

        def l1_leg(wanted: list[str]) -> dict[str, Entry]:
            try:
                return self.tag_index.keep_valid(self.l1.get_entries(wanted))
            except Exception as exc:
                failures.append(exc)
                raise

        try:
            ctx = self.ctx
            if not self.l1.local:
                ctx = PolicyContext(self.cache.executor, None, False, self.report, "get")
            shared: set[str] = set()
            token_of = dict(zip(keys, tokens))
            l2_leg = self.shared_l2_leg(token_of, shared)
            answer = self.policy.execute(keys, l1_leg, l2_leg, ctx)
        except BaseException:
            self.counters.slot()[_ERRORS] += len(keys)
            self.ordering.end_read(keys, tokens)
            raise
        try:
            slot = self.counters.slot()
            from_l2 = {k: e for k, (e, tier) in answer.items() if tier == "l2"}
            slot[_HITS] += len(answer)
            slot[_MISSES] += len(keys) - len(answer)
            slot[_L2_HITS] += len(from_l2)
            slot[_L1_HITS] += len(answer) - len(from_l2)
            # An L1 that failed to read may hold a newer value it could not show: no refill.
            if from_l2 and self.refills and not failures:
                led = {k: e for k, e in from_l2.items() if k not in shared} if shared else from_l2
                if led:
                    self.refill_l1(token_of, led)
        finally:
            self.ordering.end_read(keys, tokens)
        return {k: e for k, (e, _) in answer.items()}

    def read_l2(self, keys: list[str]) -> dict[str, Entry]:
        """L2's entries of ``keys``, without the ones whose tags were invalidated."""
        return self.tag_index.keep_valid(self.gate.read(keys))

    def refill_l1(self, token_of: t.Mapping[str, ReadToken], from_l2: dict[str, Entry]) -> None:
        """Copy L2's answers into L1, unless a write of the key began since the read did or
        waits for replay (its answer then came from the replay queue, not from L2)."""
        now = self.cache.timer()
        try:
            if self.l1.local and len(from_l2) == 1:
                ((key, entry),) = from_l2.items()
                stored: int = self.ordering.refill_one(
                    key,
                    token_of[key],
                    self.cache.cap(entry, now),
                    self.l1.set_entry,
                    self.gate.pending,
                )
            elif self.l1.local:
                cache = self.cache
                capped = (
                    from_l2
                    if cache.l1_ttl is None
                    else {k: cache.cap(e, now) for k, e in from_l2.items()}
                )
                # A key whose write waits for replay was answered from the queue, not L2.
                # With the queue empty now, none was: a write queued since began before
                # this read and, running when it began, forbids the refill anyway.
                gate = self.gate
                stored = self.ordering.refill_batch(
                    token_of,
                    capped,
                    self.l1.set_entries,
                    (lambda key: not gate.pending(key)) if gate.queue else None,
                )
            else:
                stored = self._refill_locked(token_of, from_l2, now)
            if len(from_l2) == 1:
                (self.count_refill if stored else self.count_refill_skipped)()
            else:
                slot = self.counters.slot()
                slot[_REFILLS] += stored
                slot[_REFILLS_SKIPPED] += len(from_l2) - stored
        except Exception as exc:
            # A refill is an optimisation: its failure never changes what the read returns.
            self.counters.slot()[_REFILL_ERRORS] += 1
            if not isinstance(exc, ValueTooLargeError):
                logger.warning("tiered: refilling l1 failed: %r", exc)

    def _refill_locked(
        self, token_of: t.Mapping[str, ReadToken], from_l2: dict[str, Entry], now: float
    ) -> int:
        """Refill under each key's L1 lock (what a write's L1 leg takes); how many stored."""
        chosen = sorted(from_l2)
        locks = [token_of[k][0].lock(L1) for k in chosen]
        for lock in locks:
            lock.acquire()
        try:
            items = {}
            for key in chosen:
                if self.ordering.refill_allowed(token_of[key]) and not self.gate.pending(key):
                    items[key] = self.cache.cap(from_l2[key], now)
            if items:
                self.l1.set_entries(items)
            return len(items)
        finally:
            for lock in reversed(locks):
                lock.release()
