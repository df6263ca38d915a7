"""
Composition
===========

:class:`TieredCache` composes two layers, an L1 and an L2, with a read, a write and a refill
policy. It is a backend itself, so compositions nest: ``TieredCache(l1, TieredCache(l2,
l3))`` is a three-tier cache. It holds no data of its own; the policies decide the control
flow and :mod:`tieredcache.ordering` keeps late writes from overtaking newer ones.
"""

from __future__ import annotations

import concurrent.futures
import logging
import typing as t

from tieredcache.backends.base import _CORRUPT
from tieredcache.backends.base import _DELETES
from tieredcache.backends.base import _ERRORS
from tieredcache.backends.base import _HITS
from tieredcache.backends.base import _MISSES
from tieredcache.backends.base import _SETS
from tieredcache.backends.base import Backend
from tieredcache.backends.base import _check_key
from tieredcache.backends.base import _unique_keys
from tieredcache.backends.null import NullBackend
from tieredcache.breaker import CircuitBreaker
from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.entry import validate_ttl
from tieredcache.errors import BackendError
from tieredcache.errors import BothLayersFailed
from tieredcache.errors import ConfigurationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.executor import default_executor
from tieredcache.loading import RefreshMixin
from tieredcache.offload import OffloadKey
from tieredcache.ordering import KeyState
from tieredcache.ordering import Leg
from tieredcache.ordering import Ordering
from tieredcache.policies.base import PolicyContext
from tieredcache.policies.base import tag_tier
from tieredcache.policies.read import ReadPolicy
from tieredcache.policies.read import SequentialRead
from tieredcache.policies.refill import Refill
from tieredcache.policies.write import LoserPolicy
from tieredcache.policies.write import RaceWrite
from tieredcache.policies.write import SequentialWrite
from tieredcache.policies.write import WritePolicy
from tieredcache.resilience import FailOpenMixin
from tieredcache.resilience import TierGuard
from tieredcache.serializers import Serializer
from tieredcache.stats import TIERED_COUNTERS
from tieredcache.stats import TIERED_INDEX

if t.TYPE_CHECKING:
    from tieredcache.offload import Offload

__all__ = ["TieredCache"]

logger = logging.getLogger("tieredcache")

_IDX = TIERED_INDEX
_L1_HITS, _L2_HITS = _IDX["l1_hits"], _IDX["l2_hits"]
_REFILLS, _REFILLS_SKIPPED = _IDX["refills"], _IDX["refills_skipped"]
_REFILL_ERRORS, _INVALIDATIONS = _IDX["refill_errors"], _IDX["invalidations_received"]
_L1, _L2 = 0, 1

PartialFailureHook = t.Callable[[str, t.Sequence[str], BaseException], None]


class TieredCache(RefreshMixin, FailOpenMixin, Backend):
    """Two layers composed by a read, a write and a refill policy; a backend itself.

    Thread-safe. Per key, writes from this process land in every layer in the order they
    were made: a late race loser or refill never overwrites a newer value or brings back a
    deleted key, and a leg already in flight to a slow L2 completes before the next write
    of that key is sent to it.

    :param l1: the near layer (usually a :class:`~tieredcache.MemoryBackend`).
    :param l2: the far layer (Redis, memcached, SQLite, or another ``TieredCache``).
    :param read: the read policy (default :class:`~tieredcache.SequentialRead`).
    :param write: the write policy (default :class:`~tieredcache.SequentialWrite`).
    :param refill: whether an L2 hit is copied into L1 (default ``Refill.ALWAYS``).
    :param offload: carries race losers to completion; ``None`` uses the process-wide
        :func:`~tieredcache.default_offload`, created on first use and drained at exit.
    :param l1_ttl: an upper bound, in seconds, on how long L1 keeps an entry (on writes
        and refills), so that L1 copies age out even when L2 is changed by others.
    :param executor: runs the legs of parallel and racing operations; ``None`` uses a
        process-wide thread pool.
    :param default_ttl: the TTL used when a call passes none.
    :param timer: the clock (default: the L1's).
    :param on_partial_failure: called as ``hook(tier, keys, exc)`` when a write returned
        normally although one layer failed (parallel and racing writes, fail-open).
    :param fail_open: turn L2 failures into misses and L1-only writes (logged, rate-limited,
        and counted) instead of raising; failed L2 writes and deletes are replayed when L2
        answers again. ``incr`` always raises: it cannot be right without L2.
    :param breaker: the L2's :class:`~tieredcache.CircuitBreaker`; by default a new
        ``CircuitBreaker()`` for a remote L2 and none for an in-process one; ``None`` = no
        breaker.
    :param backplane: a :class:`~tieredcache.backplane.Backplane` that tells other processes
        which keys changed, and evicts L1 copies of what they change.
    :param jitter: a fraction in ``[0, 1)``: each write's TTL is shortened by a random part
        of it, so entries written together do not all expire together.
    :param replay_limit: the most keys whose failed L2 writes wait for replay.
    """

    name = "tiered"

    def __init__(
        self,
        l1: Backend,
        l2: Backend,
        *,
        read: ReadPolicy | None = None,
        write: WritePolicy | None = None,
        refill: Refill = Refill.ALWAYS,
        offload: Offload | None = None,
        l1_ttl: float | None = None,
        executor: concurrent.futures.Executor | None = None,
        default_ttl: float | None = None,
        timer: Timer | None = None,
        on_partial_failure: PartialFailureHook | None = None,
        fail_open: bool = False,
        breaker: t.Any = DEFAULT,
        backplane: t.Any = None,
        jitter: float = 0.0,
        replay_limit: int = 10_000,
    ) -> None:
        if not isinstance(l1, Backend) or not isinstance(l2, Backend):
            raise ConfigurationError("l1 and l2 must be Backend instances")
        if l1 is l2:
            raise ConfigurationError("l1 and l2 must be different backends")
        super().__init__(default_ttl=default_ttl, timer=timer if timer is not None else l1.timer)
        self.l1 = l1
        self.l2 = l2
        self.read = read if read is not None else SequentialRead()
        self.write = write if write is not None else SequentialWrite()
        if not isinstance(self.read, ReadPolicy):
            raise ConfigurationError(f"read must be a ReadPolicy, not {self.read!r}")
        if not isinstance(self.write, WritePolicy):
            raise ConfigurationError(f"write must be a WritePolicy, not {self.write!r}")
        if not isinstance(refill, Refill):
            raise ConfigurationError(
                f"refill must be Refill.ALWAYS or Refill.NEVER, not {refill!r}"
            )
        self.refill = refill
        self.l1_ttl = validate_ttl(l1_ttl, name="l1_ttl")
        if self.l1_ttl is not None and self.l1_ttl <= 0:
            raise ConfigurationError("l1_ttl must be positive or None")
        if (
            isinstance(self.write, RaceWrite)
            and self.write.loser is LoserPolicy.OFFLOAD
            and offload is not None
            and not offload.runs_tasks
        ):
            raise ConfigurationError(
                "RaceWrite(loser=LoserPolicy.OFFLOAD) needs an offload that runs tasks; "
                f"{type(offload).__name__} drops them. Use ThreadPoolOffload or "
                "InlineOffload, or RaceWrite(loser=LoserPolicy.DROP) to drop losers."
            )
        self._offload = offload
        self._executor = executor
        self.on_partial_failure = on_partial_failure
        self.local = l1.local and l2.local
        self._counters = self._counters.__class__(TIERED_COUNTERS)
        # The read path counts with incrementers: one atomic call per lookup.
        self._count_l1_hit = self._counters.incrementer("hits", "l1_hits")
        self._count_l2_hit = self._counters.incrementer("hits", "l2_hits")
        self._count_miss = self._counters.incrementer("misses")
        self._count_refill = self._counters.incrementer("refills")
        self._count_refill_skipped = self._counters.incrementer("refills_skipped")
        self._ordering = Ordering()
        self._sequential_read = type(self.read) is SequentialRead
        self._read_ctx = PolicyContext(None, None, l1.local, self._report_read, "get")
        self._check_values = self._serializers_to_check()
        # With a NullBackend as L2 the composition is an L1-only cache: L1 decides add/incr.
        self._l2_stores_nothing = isinstance(l2, NullBackend)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ConfigurationError(f"jitter must be a fraction in [0, 1), not {jitter!r}")
        self.jitter = float(jitter)
        if breaker is DEFAULT:
            breaker = None if l2.local else CircuitBreaker(name=f"l2 {l2.name}")
        elif breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(f"breaker must be a CircuitBreaker or None, not {breaker!r}")
        self._guard = TierGuard(breaker, bool(fail_open), replay_limit)
        if breaker is not None:
            breaker.on_close(self._schedule_replay)
        self._replay_key = OffloadKey.explicit("replay", f"{id(self):x}")
        self.backplane = backplane
        if backplane is not None:
            backplane.subscribe(self._on_invalidate, self._on_reset)

    # -- configuration helpers --------------------------------------------------------

    @property
    def offload(self) -> Offload:
        """The offload carrying this cache's background work."""
        if self._offload is None:
            from tieredcache.offload import default_offload

            self._offload = default_offload()
        return self._offload

    @property
    def executor(self) -> concurrent.futures.Executor:
        """The executor running this cache's parallel legs."""
        if self._executor is None:
            self._executor = default_executor()
        return self._executor

    def serializers(self) -> list[Serializer]:
        """Every serializer the layers use (nested compositions included)."""
        found: list[Serializer] = []
        for layer in (self.l1, self.l2):
            if isinstance(layer, TieredCache):
                found.extend(layer.serializers())
            else:
                serializer = getattr(layer, "serializer", None)
                if serializer is not None:
                    found.append(serializer)
        return found

    def _serializers_to_check(self) -> list[Serializer]:
        # A value must be serializable by every layer before any layer is written. Under
        # SequentialWrite the L1 write itself fails first if L1 cannot serialize the value,
        # so only the serializers L1 does not already apply need a check beforehand.
        l1_own: list[Serializer] = []
        if isinstance(self.write, SequentialWrite):
            l1_own = (
                self.l1.serializers()
                if isinstance(self.l1, TieredCache)
                else [s for s in [getattr(self.l1, "serializer", None)] if s is not None]
            )
        unique: list[Serializer] = []
        for serializer in self.serializers():
            if all(serializer is not s for s in (*l1_own, *unique)):
                unique.append(serializer)
        return unique

    def _check_serializable(self, values: t.Iterable[t.Any]) -> None:
        for serializer in self._check_values:
            for value in values:
                serializer.dumps(value)

    def _cap(self, entry: Entry, now: float) -> Entry:
        """The entry as L1 keeps it: no longer than ``l1_ttl``."""
        if self.l1_ttl is None:
            return entry
        limit = now + self.l1_ttl
        if entry.expires_at is not None and entry.expires_at <= limit:
            return entry
        return entry.replace(expires_at=limit)

    # -- reporting --------------------------------------------------------------------

    def _report_read(self, tier: str, exc: BaseException) -> None:
        self._counters.slot()[_IDX[f"{tier}_read_errors"]] += 1
        logger.warning("tiered: %s read failed, counted as a miss: %r", tier, exc)

    def _write_context(self, keys: t.Sequence[str], operation: str) -> PolicyContext:
        def report(tier: str, exc: BaseException) -> None:
            self._counters.slot()[_IDX[f"{tier}_write_errors"]] += 1
            logger.warning("tiered: %s %s of %d key(s) failed: %r", tier, operation, len(keys), exc)
            if self.on_partial_failure is not None:
                try:
                    self.on_partial_failure(tier, list(keys), exc)
                except Exception:
                    logger.exception("tiered: on_partial_failure hook raised")

        if isinstance(self.write, SequentialWrite):
            return PolicyContext(None, None, self.l1.local, report, operation)
        offload = self.offload if isinstance(self.write, RaceWrite) else self._offload
        return PolicyContext(self.executor, offload, self.l1.local, report, operation)

    # -- ordered legs -----------------------------------------------------------------

    def _guarded(
        self,
        tier: int,
        keys: list[str],
        states: list[KeyState],
        seq: int,
        op: t.Callable[[list[str]], object],
        *,
        mark: bool = True,
        supersede: bool = True,
    ) -> object:
        """Run ``op`` on the keys whose layer ``tier`` holds nothing newer than ``seq``.

        With ``supersede=False`` the operation runs whatever landed meanwhile (an atomic
        read-modify-write such as ``incr`` or ``add`` decides at the store itself).
        """
        order = sorted(range(len(keys)), key=keys.__getitem__)
        locks = [states[i].locks[tier] for i in order]
        for lock in locks:
            lock.acquire()
        try:
            if supersede and seq < self._ordering.cleared:
                return None
            live = [keys[i] for i in order if not supersede or states[i].written[tier] <= seq]
            if not live:
                return None
            result = op(live)
            if mark:
                for i in order:
                    if states[i].written[tier] < seq:
                        states[i].written[tier] = seq
            return result
        finally:
            for lock in reversed(locks):
                lock.release()

    def _legs(
        self,
        keys: list[str],
        seq: int,
        l1_op: t.Callable[[list[str]], object],
        l2_op: t.Callable[[list[str]], object],
    ) -> tuple[Leg, Leg]:
        states = self._ordering.begin_write(keys, seq)

        def release() -> None:
            self._ordering.end_leg(keys, states)

        return (
            Leg(lambda: self._guarded(_L1, keys, states, seq, l1_op), release),
            Leg(lambda: self._guarded(_L2, keys, states, seq, l2_op), release),
        )

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str, default: t.Any = None) -> t.Any:
        # get_entry() inlined: an L1 hit is one call into L1 and one atomic count.
        if self._sequential_read:
            try:
                entry = self.l1.get_entry(key)
            except Exception as exc:
                _check_key(key)
                self._report_read("l1", tag_tier(exc, "l1"))
                entry = self._read_one_from_l2(key, exc)
            else:
                if entry is not None:
                    self._count_l1_hit()
                    return entry.value
                entry = self._read_one_from_l2(key, None)
        else:
            entry = self.get_entry(key)
        return default if entry is None else entry.value

    def get_entry(self, key: str) -> Entry | None:
        if self._sequential_read:
            try:
                entry = self.l1.get_entry(key)
            except Exception as exc:
                _check_key(key)
                self._report_read("l1", tag_tier(exc, "l1"))
                return self._read_one_from_l2(key, exc)
            if entry is not None:
                self._count_l1_hit()
                return entry
            return self._read_one_from_l2(key, None)
        _check_key(key)
        return self._read_through([key]).get(key)

    def _read_one_from_l2(self, key: str, l1_error: BaseException | None) -> Entry | None:
        """L1 missed (or failed on) ``key``: read it from L2 and refill L1.

        ``_read_through`` for one key, without its batch structures: the same ordering
        token, error table, counters and refill rule.
        """
        ordering = self._ordering
        token = ordering.begin_read_one(key)
        try:
            try:
                entry = self._l2_read_one(key)
            except Exception as exc:
                if l1_error is not None:
                    raise BothLayersFailed(l1_error, tag_tier(exc, "l2"), operation="get") from None
                raise tag_tier(exc, "l2") from None
        except BaseException:
            self._counters.slot()[_ERRORS] += 1
            ordering.end_read_one(key, token)
            raise
        try:
            if entry is None:
                self._count_miss()
            else:
                self._count_l2_hit()
                # An L1 that failed to read may hold a newer value it could not show.
                if self.refill is Refill.ALWAYS and l1_error is None:
                    self._refill_one(key, token, entry)
        finally:
            ordering.end_read_one(key, token)
        return entry

    def _refill_one(self, key: str, token: tuple[KeyState, int, int], entry: Entry) -> None:
        now = self._now()
        with token[0].locks[_L1]:
            try:
                if self._ordering.refill_allowed(token):
                    self.l1.set_entry(key, self._cap(entry, now))
                    self._count_refill()
                else:
                    self._count_refill_skipped()
            except Exception as exc:
                # A refill is an optimisation: its failure never changes what the read returns.
                self._counters.slot()[_REFILL_ERRORS] += 1
                if not isinstance(exc, ValueTooLargeError):
                    logger.warning("tiered: refilling l1 failed: %r", exc)

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        wanted = _unique_keys(keys)
        if not wanted:
            return {}
        return self._read_through(wanted)

    def _read_through(self, keys: list[str]) -> dict[str, Entry]:
        """Read ``keys`` through the read policy, count, and refill L1 from L2's answers."""
        tokens = self._ordering.begin_read(keys)
        failures: list[BaseException] = []

        def l1_leg(wanted: list[str]) -> dict[str, Entry]:
            try:
                return self.l1.get_entries(wanted)
            except Exception as exc:
                failures.append(exc)
                raise

        try:
            ctx = self._read_ctx
            if not self.l1.local:
                ctx = PolicyContext(self.executor, None, False, self._report_read, "get")
            answer = self.read.execute(keys, l1_leg, self._l2_read, ctx)
        except BaseException:
            self._counters.slot()[_ERRORS] += len(keys)
            self._ordering.end_read(keys, tokens)
            raise
        try:
            slot = self._counters.slot()
            from_l2 = {k: e for k, (e, tier) in answer.items() if tier == "l2"}
            slot[_HITS] += len(answer)
            slot[_MISSES] += len(keys) - len(answer)
            slot[_L2_HITS] += len(from_l2)
            slot[_L1_HITS] += len(answer) - len(from_l2)
            # An L1 that failed to read may hold a newer value it could not show: no refill.
            if from_l2 and self.refill is Refill.ALWAYS and not failures:
                self._refill(keys, tokens, from_l2)
        finally:
            self._ordering.end_read(keys, tokens)
        return {k: e for k, (e, _) in answer.items()}

    def _refill(
        self,
        keys: list[str],
        tokens: list[tuple[KeyState, int, int]],
        from_l2: dict[str, Entry],
    ) -> None:
        now = self._now()
        token_of = dict(zip(keys, tokens))
        chosen = sorted(from_l2)
        locks = [token_of[k][0].locks[_L1] for k in chosen]
        for lock in locks:
            lock.acquire()
        try:
            items = {}
            for key in chosen:
                if self._ordering.refill_allowed(token_of[key]):
                    items[key] = self._cap(from_l2[key], now)
            skipped = len(chosen) - len(items)
            if items:
                self.l1.set_entries(items)
            slot = self._counters.slot()
            slot[_REFILLS] += len(items)
            slot[_REFILLS_SKIPPED] += skipped
        except Exception as exc:
            # A refill is an optimisation: its failure never changes what the read returns.
            self._counters.slot()[_REFILL_ERRORS] += 1
            if not isinstance(exc, ValueTooLargeError):
                logger.warning("tiered: refilling l1 failed: %r", exc)
        finally:
            for lock in reversed(locks):
                lock.release()

    # -- writes -----------------------------------------------------------------------

    def _write_l1(self, items: dict[str, Entry]) -> t.Callable[[list[str]], object]:
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

    def set_entry(self, key: str, entry: Entry) -> None:
        self.set_entries({key: entry})

    def set_entries(self, items: t.Mapping[str, Entry]) -> None:
        for key in items:
            _check_key(key)
        now = self._now()
        live = {k: e for k, e in items.items() if e.expires_at is None or e.expires_at > now}
        dead = [k for k in items if k not in live]
        if live:
            self._check_serializable([e.value for e in live.values()])
            keys = list(live)
            l1_items = {k: self._cap(e, now) for k, e in live.items()}
            seq = next_version()
            leg1, leg2 = self._legs(
                keys,
                seq,
                self._write_l1(l1_items),
                lambda chosen: self._l2_set(chosen, live, seq),
            )
            self.write.execute(leg1, leg2, self._write_context(keys, "set"))
            self._counters.slot()[_SETS] += len(keys)
            self._publish("set", keys, seq)
        if dead:
            self.delete_many(dead)

    def add_entry(self, key: str, entry: Entry) -> bool:
        _check_key(key)
        now = self._now()
        if entry.expires_at is not None and entry.expires_at <= now:
            return False
        self._check_serializable([entry.value])
        keys = [key]
        seq = next_version()
        states = self._ordering.begin_write(keys, seq)
        try:
            if self._l2_stores_nothing:
                added = self._guarded(
                    _L1, keys, states, seq, lambda _: self.l1.add_entry(key, self._cap(entry, now))
                )
                return bool(added)
            # L2 is the shared authority: the add is decided there, then mirrored in L1.
            try:
                added = self._guarded(
                    _L2,
                    keys,
                    states,
                    seq,
                    lambda _: self._guard.call(self.l2.add_entry, key, entry),
                    supersede=False,
                )
            except BackendError as exc:
                if not self._guard.fail_open:
                    raise
                self._absorb("write", "add", keys, exc)
                # Without L2 the add can only be decided by this process's L1.
                return bool(
                    self._guarded(
                        _L1,
                        keys,
                        states,
                        seq,
                        lambda _: self.l1.add_entry(key, self._cap(entry, now)),
                    )
                )
            if added:
                self._guarded(_L1, keys, states, seq, self._write_l1({key: self._cap(entry, now)}))
                self._counters.slot()[_SETS] += 1
                self._publish("set", keys, seq)
            return bool(added)
        finally:
            self._ordering.end_leg(keys, states)
            self._ordering.end_leg(keys, states)

    def delete(self, key: str) -> bool:
        _check_key(key)
        return bool(self._delete_keys([key]))

    def delete_many(self, keys: t.Iterable[str]) -> int:
        """Remove ``keys`` from both layers (L2 first); how many either layer held."""
        wanted = _unique_keys(keys)
        if not wanted:
            return 0
        return len(self._delete_keys(wanted))

    def delete_each(self, keys: t.Iterable[str]) -> list[str]:
        """Remove ``keys`` from both layers (L2 first); the ones either layer held."""
        wanted = _unique_keys(keys)
        if not wanted:
            return []
        return self._delete_keys(wanted)

    def _delete_keys(self, keys: list[str]) -> list[str]:
        """Delete from L2, then L1, so that a concurrent refill cannot bring a key back."""
        seq = next_version()
        states = self._ordering.begin_write(keys, seq)
        errors: dict[str, BaseException] = {}
        held: set[str] = set()
        ops: tuple[tuple[int, t.Callable[[list[str]], object]], ...] = (
            (_L2, lambda live: self._l2_delete(live, seq)),
            (_L1, self.l1.delete_each),
        )
        for tier, op in ops:
            name = "l1" if tier == _L1 else "l2"
            try:
                result = self._guarded(tier, keys, states, seq, op)
                held.update(t.cast("list[str]", result or ()))
            except Exception as exc:
                errors[name] = tag_tier(exc, name)
            finally:
                self._ordering.end_leg(keys, states)
        self._counters.slot()[_DELETES] += len(keys)
        if len(errors) == 2:
            raise BothLayersFailed(errors["l1"], errors["l2"], operation="delete")
        for failure in errors.values():
            raise failure
        self._publish("delete", keys, seq)
        return [key for key in keys if key in held]

    def touch_entry(self, key: str, expires_at: float | None) -> bool:
        _check_key(key)
        if expires_at is not None and expires_at <= self._now():
            return self.delete(key)
        keys = [key]
        seq = next_version()
        states = self._ordering.begin_write(keys, seq)
        now = self._now()
        l1_expiry = self._cap(Entry(None, expires_at), now).expires_at
        try:
            touched2 = self._guarded(
                _L2, keys, states, seq, lambda _: self._l2_touch(key, expires_at, seq), mark=False
            )
            touched1 = self._guarded(
                _L1, keys, states, seq, lambda _: self.l1.touch_entry(key, l1_expiry), mark=False
            )
        finally:
            self._ordering.end_leg(keys, states)
            self._ordering.end_leg(keys, states)
        self._publish("touch", keys, seq)
        return bool(touched2) or bool(touched1)

    def _incr(self, key: str, delta: int) -> int:
        if self._l2_stores_nothing:
            return self.l1.incr(key, delta)
        keys = [key]
        seq = next_version()
        states = self._ordering.begin_write(keys, seq)
        try:

            def incr_l2(_: list[str]) -> int:
                try:
                    return self._guard.call(self.l2.incr, key, delta)
                except KeyError:
                    # L1 may hold what L2 lost (eviction, Refill.NEVER): seed L2 from it.
                    held = self.l1.get_entry(key)
                    if held is None:
                        raise
                    self._guard.call(self.l2.add_entry, key, held)
                    return self._guard.call(self.l2.incr, key, delta)

            value = self._guarded(_L2, keys, states, seq, incr_l2, supersede=False)
            # L1 drops its copy; the next read refills it with L2's exact entry.
            self._guarded(_L1, keys, states, seq, self.l1.delete_many)
            self._publish("set", keys, seq)
            return t.cast(int, value)
        finally:
            self._ordering.end_leg(keys, states)
            self._ordering.end_leg(keys, states)

    def _clear(self) -> None:
        seq = self._ordering.cleared = next_version()
        errors: dict[str, BaseException] = {}
        try:
            self._guard.call(self.l2.clear)
        except BackendError as exc:
            if self._guard.fail_open:
                # A clear is not replayed: it would also remove what was written after it.
                self._absorb("write", "clear", [], exc)
            else:
                errors["l2"] = tag_tier(exc, "l2")
        except Exception as exc:
            errors["l2"] = tag_tier(exc, "l2")
        try:
            self.l1.clear()
        except Exception as exc:
            errors["l1"] = tag_tier(exc, "l1")
        if not errors:
            self._publish("clear", [], seq)
        if len(errors) == 2:
            raise BothLayersFailed(errors["l1"], errors["l2"], operation="clear")
        for failure in errors.values():
            raise failure

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the offload has finished this cache's background writes."""
        if self._offload is None:
            return True
        return self._offload.drain(timeout)

    def _close(self) -> None:
        """Finish background writes, then close both layers (and the backplane)."""
        self.drain()
        if self.backplane is not None:
            self.backplane.close()
        errors = []
        for layer in (self.l1, self.l2):
            try:
                layer.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- coherence across processes -----------------------------------------------------

    def _publish(self, kind: str, keys: list[str], seq: int) -> None:
        if self.backplane is not None:
            self.backplane.publish(kind, keys, seq)

    def _on_invalidate(self, kind: str, keys: list[str]) -> None:
        """Another process changed ``keys``: drop this process's L1 copies."""
        self._counters.slot()[_INVALIDATIONS] += 1
        if kind == "clear":
            self._on_reset()
            return
        if not keys:
            return
        seq = next_version()
        states = self._ordering.begin_write(keys, seq, legs=1)
        try:
            self._guarded(_L1, keys, states, seq, self.l1.delete_many)
        except Exception:
            logger.exception("tiered: evicting invalidated keys from l1 failed")
        finally:
            self._ordering.end_leg(keys, states)

    def _on_reset(self) -> None:
        """Invalidations may have been missed: nothing in L1 can be trusted any more."""
        self._ordering.l1_reset = next_version()
        try:
            self.l1.clear()
        except Exception:
            logger.exception("tiered: flushing l1 after a backplane reset failed")

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict[str, t.Any]:
        """The composition's counters, plus ``l1`` and ``l2`` with each layer's stats."""
        figures = super().stats()
        figures["l1"] = self.l1.stats()
        figures["l2"] = self.l2.stats()
        figures["in_flight_keys"] = len(self._ordering)
        figures.update(self._guard.stats())
        if self._offload is not None:
            figures["offload"] = self._offload.stats()
        if self.backplane is not None:
            figures["backplane"] = self.backplane.stats()
        return figures

    def _check_invariants(self) -> None:
        """Assert internal consistency when no operation is in flight (for tests)."""
        assert len(self._ordering) == 0, "ordering state left behind"
        for layer in (self.l1, self.l2):
            check = getattr(layer, "_check_invariants", None)
            if check is not None:
                check()

    def __repr__(self) -> str:
        return (
            f"<TieredCache l1={self.l1!r} l2={self.l2!r} read={self.read!r} "
            f"write={self.write!r} refill={self.refill.name}>"
        )


# The base class's entry-level reads count with these indices; the composition keeps them.
assert tuple(range(6)) == (_HITS, _MISSES, _ERRORS, _CORRUPT, _SETS, _DELETES)
