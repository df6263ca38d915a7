"""
Writes through a composition
============================

:class:`Writer` runs every write of a :class:`~tieredcache.TieredCache` from start to end:
it takes the keys' place in the per-key ordering (:mod:`.ordering`), runs the L1 leg, and
hands the L2 leg to the :class:`~.l2gate.L2Gate`, which owns the breaker, fail-open, the
replay queue and the announcement once L2 has the write. Deletes and clears go to L2 first,
then L1, so that a concurrent refill cannot bring a key back. The composition validates,
stamps and encodes each write once before it gets here (see
:meth:`TieredCache.set <tieredcache.TieredCache.set>`).
"""

from __future__ import annotations

import logging
import typing as t

from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import BothLayersFailed
from tieredcache.errors import ValueTooLargeError
from tieredcache.keys import check_key
from tieredcache.policies.base import PolicyContext
from tieredcache.policies.base import tag_tier
from tieredcache.policies.write import RaceWrite
from tieredcache.policies.write import SequentialWrite
from tieredcache.policies.write import WritePolicy
from tieredcache.stats import TIERED_INDEX
from tieredcache.stats import Counters
from tieredcache.tiered.ordering import L1
from tieredcache.tiered.replay import delete_replay
from tieredcache.tiered.replay import set_replay
from tieredcache.tiered.replay import touch_replay

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.tiered.cache import TieredCache
    from tieredcache.tiered.l2gate import L2Gate
    from tieredcache.tiered.ordering import Ordering

__all__ = ["Writer"]

logger = logging.getLogger("tieredcache")

_SETS, _DELETES = TIERED_INDEX["sets"], TIERED_INDEX["deletes"]


class Writer:
    """Writes for one :class:`~tieredcache.TieredCache`. Thread-safe.

    :param cache: the composition (its clock, L1 cap, serializability checks and reporting).
    :param l2_stores_nothing: L2 is a :class:`~tieredcache.NullBackend`: L1 decides ``add``
        and ``incr``.
    """

    def __init__(
        self,
        cache: TieredCache,
        *,
        l1: Backend,
        l2: Backend,
        gate: L2Gate,
        ordering: Ordering,
        counters: Counters,
        policy: WritePolicy,
        l2_stores_nothing: bool,
    ) -> None:
        self.cache = cache
        self.l1 = l1
        self.l2 = l2
        self.gate = gate
        self.ordering = ordering
        self.counters = counters
        self.policy = policy
        #: The policy is SequentialWrite itself: its legs run here, in its order.
        self.sequential = type(policy) is SequentialWrite
        self.racing = isinstance(policy, RaceWrite)
        self.l2_stores_nothing = l2_stores_nothing

    def context(self, keys: t.Sequence[str], operation: str) -> PolicyContext:
        """What the write policy runs the legs of a write of ``keys`` with."""
        cache = self.cache
        offload = cache.offload if self.racing else None
        return PolicyContext(
            None if isinstance(self.policy, SequentialWrite) else cache.executor,
            offload,
            self.l1.local,
            _Report(self, keys, operation),
            operation,
        )

    def report(self, keys: t.Sequence[str], operation: str, tier: str, exc: BaseException) -> None:
        """A layer failure of a write of ``keys`` that the policy absorbed: counted, logged
        (rate-limited) and passed to the composition's ``on_partial_failure`` hook."""
        self.counters.slot()[TIERED_INDEX[f"{tier}_write_errors"]] += 1
        self.gate.log.warning(
            f"{tier}-{operation}",
            "tiered: %s %s of %d key(s) failed: %r",
            tier,
            operation,
            len(keys),
            exc,
        )
        hook = self.cache.on_partial_failure
        if hook is not None:
            try:
                hook(tier, list(keys), exc)
            except Exception:
                logger.exception("tiered: on_partial_failure hook raised")

    def write_l1(self, items: dict[str, Entry]) -> t.Callable[[list[str]], object]:
        """The L1 part of a set of ``items``."""

        def op(live: list[str]) -> None:
            chosen = {k: items[k] for k in live}
            try:
                self.l1.set_entries(chosen)
            except ValueTooLargeError:
                # A value too large for L1 lives in L2 only; L1 must not keep an older copy.
                for key, entry in chosen.items():
                    try:
                        self.l1.set_entry(key, entry)
                    except ValueTooLargeError:
                        self.l1.delete(key)

        return op

    def write_entries(self, live: dict[str, Entry], now: float, seq: int | None = None) -> None:
        """Write validated, unexpired ``live`` entries through the write policy (at ``seq``
        in the per-key ordering: a new version when not given)."""
        keys = list(live)
        gate = self.gate
        if seq is None:
            seq = next_version()
        with gate.operation(), self.ordering.write(keys, seq) as slot:
            l1_op = self.write_l1({k: self.cache.cap(e, now) for k, e in live.items()})
            l2_op = gate.set_op(live, seq)
            if self.sequential:
                # SequentialWrite.execute, run here without handing out legs: L1, then L2;
                # an L1 failure leaves L2 unwritten (the slot ends its leg).
                try:
                    slot.run(L1, l1_op)
                except Exception as exc:
                    raise tag_tier(exc, "l1") from None
                try:
                    gate.run(slot, l2_op, set_replay(live))
                except Exception as exc:
                    raise tag_tier(exc, "l2") from None
            else:
                leg1 = slot.leg(L1, l1_op)
                leg2 = gate.leg(slot, l2_op, set_replay(live))
                self.policy.execute(leg1, leg2, self.context(keys, "set"))
        self.counters.slot()[_SETS] += len(keys)

    def add(self, key: str, entry: Entry) -> bool:
        check_key(key)
        now = self.cache.timer()
        if entry.expires_at is not None and entry.expires_at <= now:
            return False
        self.cache.check_entries({key: entry})
        keys = [key]
        gate = self.gate
        l1_entry = self.cache.cap(entry, now)
        with gate.operation(), self.ordering.write(keys, next_version()) as slot:
            if self.l2_stores_nothing:
                return bool(slot.run(L1, lambda _: self.l1.add_entry(key, l1_entry)))

            def add_l2(_: list[str]) -> bool:
                added: bool = gate.call(self.l2.add_entry, key, entry)
                if added:
                    gate.landed("set", keys, slot.seq)
                return added

            # L2 is the shared authority: the add is decided there, then mirrored in L1.
            try:
                added = gate.run(slot, add_l2, None, supersede=False)
            except BackendUnavailableError as exc:
                if not gate.fail_open:
                    raise
                gate.absorb("write", "add", keys, exc)
                # Without L2 the add can only be decided by this process's L1.
                return bool(slot.run(L1, lambda _: self.l1.add_entry(key, l1_entry)))
            if added:
                slot.run(L1, self.write_l1({key: l1_entry}))
                self.counters.slot()[_SETS] += 1
            return bool(added)

    def fill(self, key: str, entry: Entry) -> Entry:
        """Store a value loaded after a miss, set-if-absent at L2; the entry now held.

        L2 decides: when the add wins, no other process can hold a copy of the key, so
        nothing is announced; when it loses (another process filled or wrote the key
        meanwhile), L2's entry is returned and copied into L1 instead. ``get_or_set``
        stores what its loader returns this way.
        """
        check_key(key)
        now = self.cache.timer()
        if entry.expires_at is not None and entry.expires_at <= now:
            return entry
        if self.l2_stores_nothing:
            self.cache.set_entries({key: entry})
            return entry
        self.cache.check_serializable([entry.value])
        keys = [key]
        gate = self.gate
        held: Entry | None = entry
        added = fallback = False
        with gate.operation(), self.ordering.write(keys, next_version()) as slot:
            try:
                added = bool(
                    gate.run(
                        slot,
                        lambda _: gate.call(self.l2.add_entry, key, entry),
                        None,
                        supersede=False,
                    )
                )
                if not added:
                    held = gate.read(keys).get(key)
                    if held is not None and held.tags and not self.cache.tag_index.valid(held):
                        # L2 still holds an entry whose tag was invalidated: logically the
                        # key is empty, so the loaded value replaces it.
                        held = None
                        fallback = True
            except BackendUnavailableError as exc:
                if not gate.fail_open:
                    raise
                gate.absorb("write", "add", keys, exc)
                held = None
                fallback = True  # written below as an ordinary write, replayed later
            if held is not None:
                slot.run(L1, self.write_l1({key: self.cache.cap(held, now)}))
                if held is entry:
                    self.counters.slot()[_SETS] += 1
                return held
        if fallback:  # L2 unavailable (replayed later), or holding an invalidated entry
            self.write_entries({key: entry}, now)
        # Otherwise L2 lost the winner meanwhile (expired, deleted): nothing is stored.
        return entry

    def delete_keys(self, keys: list[str]) -> list[str]:
        """Delete from L2, then L1, so that a concurrent refill cannot bring a key back."""
        errors: dict[str, BaseException] = {}
        held: set[str] = set()
        gate = self.gate
        with gate.operation(), self.ordering.write(keys, next_version()) as slot:
            try:
                result = gate.run(slot, gate.delete_op(slot.seq), delete_replay)
                held.update(t.cast("list[str]", result or ()))
            except Exception as exc:
                errors["l2"] = tag_tier(exc, "l2")
            try:
                held.update(t.cast("list[str]", slot.run(L1, self.l1.delete_each) or ()))
            except Exception as exc:
                errors["l1"] = tag_tier(exc, "l1")
        self.counters.slot()[_DELETES] += len(keys)
        if len(errors) == 2:
            raise BothLayersFailed(errors["l1"], errors["l2"], operation="delete")
        for failure in errors.values():
            raise failure
        return [key for key in keys if key in held]

    def touch(self, key: str, expires_at: float | None) -> bool:
        check_key(key)
        now = self.cache.timer()
        if expires_at is not None and expires_at <= now:
            return self.cache.delete(key)
        keys = [key]
        l1_expiry = self.cache.cap(Entry(None, expires_at), now).expires_at
        gate = self.gate
        with gate.operation(), self.ordering.write(keys, next_version()) as slot:
            touched2 = gate.run(
                slot, gate.touch_op(key, expires_at, slot.seq), touch_replay(expires_at), mark=False
            )
            touched1 = slot.run(L1, lambda _: self.l1.touch_entry(key, l1_expiry), mark=False)
        return bool(touched2) or bool(touched1)

    def incr(self, key: str, delta: int) -> int:
        if self.l2_stores_nothing:
            return self.l1.incr(key, delta)
        keys = [key]
        gate = self.gate
        with gate.operation(), self.ordering.write(keys, next_version()) as slot:

            def incr_l2(_: list[str]) -> int:
                value: int = gate.call(self.l2.incr, key, delta)
                gate.landed("set", keys, slot.seq)
                return value

            try:
                # L2, the shared authority, decides: a key it does not hold is missing, even
                # if L1 still holds a copy (the key was deleted elsewhere, or evicted).
                value = gate.run(slot, incr_l2, None, supersede=False)
            finally:
                # L1 drops its copy either way; the next read takes L2's exact entry.
                slot.run(L1, self.l1.delete_many)
            return t.cast(int, value)

    def clear(self) -> None:
        seq = self.ordering.begin_clear()
        errors: dict[str, BaseException] = {}
        gate = self.gate
        try:
            gate.call(self.l2.clear)
        except BackendUnavailableError as exc:
            if gate.fail_open:
                # A clear is not replayed: it would also remove what was written after it.
                gate.absorb("write", "clear", [], exc)
            else:
                errors["l2"] = tag_tier(exc, "l2")
        except Exception as exc:
            errors["l2"] = tag_tier(exc, "l2")
        else:
            gate.landed("clear", [], seq)
        try:
            self.l1.clear()
        except Exception as exc:
            errors["l1"] = tag_tier(exc, "l1")
        if len(errors) == 2:
            raise BothLayersFailed(errors["l1"], errors["l2"], operation="clear")
        for failure in errors.values():
            raise failure


class _Report:
    """``report(tier, exc)`` of a policy context: :meth:`Writer.report` for one write."""

    __slots__ = ("keys", "operation", "writer")

    def __init__(self, writer: Writer, keys: t.Sequence[str], operation: str) -> None:
        self.writer = writer
        self.keys = keys
        self.operation = operation

    def __call__(self, tier: str, exc: BaseException) -> None:
        self.writer.report(self.keys, self.operation, tier, exc)
