"""
Composition
===========

:class:`TieredCache` composes two layers, an L1 and an L2, with a read, a write and a refill
policy. It is a backend itself, so compositions nest: ``TieredCache(l1, TieredCache(l2,
l3))`` is a three-tier cache. It holds no data of its own.

One owner runs each operation from start to end: the composition validates and stamps the
write once, takes the keys' place in the per-key ordering (:mod:`.ordering`), runs the L1
leg, and hands the L2 leg to its :class:`~.l2gate.L2Gate`, which owns the breaker,
fail-open, the replay of failed writes and the announcement of what landed. Loading values
(``get_or_set``, stale-while-revalidate) is the :class:`~.refresh.Refresher`'s.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import random
import typing as t

from tieredcache.backends.base import Backend
from tieredcache.backends.base import check_key
from tieredcache.backends.base import unique_keys
from tieredcache.backends.null import NullBackend
from tieredcache.breaker import CircuitBreaker
from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.entry import validate_ttl
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import BothLayersFailed
from tieredcache.errors import ConfigurationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.events import BACKPLANE_RESET
from tieredcache.events import BREAKER_CLOSED
from tieredcache.events import BREAKER_OPENED
from tieredcache.events import Events
from tieredcache.executor import default_executor
from tieredcache.keys import check_keys
from tieredcache.policies.base import PolicyContext
from tieredcache.policies.base import tag_tier
from tieredcache.policies.read import ReadPolicy
from tieredcache.policies.read import SequentialRead
from tieredcache.policies.refill import Refill
from tieredcache.policies.write import LoserPolicy
from tieredcache.policies.write import RaceWrite
from tieredcache.policies.write import SequentialWrite
from tieredcache.policies.write import WritePolicy
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer
from tieredcache.stats import TIERED_COUNTERS
from tieredcache.stats import TIERED_INDEX
from tieredcache.stats import Counters
from tieredcache.tiered.coherence import OwnWrites
from tieredcache.tiered.coherence import apply_message
from tieredcache.tiered.features import CacheFeatures
from tieredcache.tiered.l2gate import L2Gate
from tieredcache.tiered.l2gate import PartialFailureHook
from tieredcache.tiered.l2gate import delete_replay
from tieredcache.tiered.l2gate import set_replay
from tieredcache.tiered.l2gate import touch_replay
from tieredcache.tiered.loading import LoadOptions
from tieredcache.tiered.ordering import L1
from tieredcache.tiered.ordering import Ordering
from tieredcache.tiered.ordering import ReadToken
from tieredcache.tiered.readflight import Flight
from tieredcache.tiered.readflight import ReadFlights
from tieredcache.tiered.refresh import Refresher
from tieredcache.tiered.tags import TagIndex
from tieredcache.tiered.tags import check_tags

if t.TYPE_CHECKING:
    from tieredcache.backplane import Backplane
    from tieredcache.backplane import Message
    from tieredcache.offload import Offload

__all__ = ["TieredCache"]

logger = logging.getLogger("tieredcache")

_IDX = TIERED_INDEX
_HITS, _MISSES, _ERRORS = _IDX["hits"], _IDX["misses"], _IDX["errors"]
_SETS, _DELETES = _IDX["sets"], _IDX["deletes"]
_L1_HITS, _L2_HITS = _IDX["l1_hits"], _IDX["l2_hits"]
_REFILLS, _REFILLS_SKIPPED = _IDX["refills"], _IDX["refills_skipped"]
_REFILL_ERRORS, _INVALIDATIONS = _IDX["refill_errors"], _IDX["invalidations_received"]


class TieredCache(CacheFeatures, Backend):
    """Two layers composed by a read, a write and a refill policy; a backend itself.

    Thread-safe and fork-safe. Per key, writes from this process land in every layer in the
    order they were made: a late race loser or refill never overwrites a newer value or
    brings back a deleted key, and a leg already in flight to a slow L2 completes before the
    next write of that key is sent to it.

    :param l1: the near layer (usually a :class:`~tieredcache.MemoryBackend`).
    :param l2: the far layer (Redis, memcached, SQLite, or another ``TieredCache``).
    :param read: the read policy (default :class:`~tieredcache.SequentialRead`).
    :param write: the write policy (default :class:`~tieredcache.SequentialWrite`).
    :param refill: whether an L2 hit is copied into L1 (default ``Refill.ALWAYS``).
    :param offload: carries race losers and refreshes to completion; ``None`` uses the
        process-wide :func:`~tieredcache.default_offload`, drained at exit.
    :param l1_ttl: an upper bound, in seconds, on how long L1 keeps an entry (on writes
        and refills), so that L1 copies age out even when L2 is changed by others.
    :param executor: runs the legs of parallel and racing operations; ``None`` uses the
        process-wide thread pool (a new one in a forked child).
    :param default_ttl: the TTL used when a call passes none.
    :param timer: the clock (default: the L1's).
    :param on_partial_failure: called as ``hook(tier, keys, exc)`` when a write returned
        normally although one layer failed (parallel and racing writes, fail-open).
    :param fail_open: turn L2 availability failures into misses and L1-only writes
        (logged, rate-limited, and counted) instead of raising; failed L2 writes and deletes
        are replayed as soon as L2 answers again, and reads of their keys answer from the
        queue meanwhile. ``incr`` always raises: it cannot be right without L2.
    :param breaker: the L2's :class:`~tieredcache.CircuitBreaker`; by default a new
        ``CircuitBreaker()`` for a remote L2 and none for an in-process one; ``None`` = no
        breaker.
    :param backplane: a :class:`~tieredcache.backplane.Backplane` that tells other processes
        which keys changed (after L2 has the change), and evicts L1 copies of what they
        change.
    :param jitter: a fraction in ``[0, 1)``: each write's TTL is shortened by a random part
        of it, so entries written together do not all expire together.
    :param replay_limit: the most keys whose failed L2 writes wait for replay.
    :param tag_ttl: how long, in seconds, this process trusts its copy of a tag's
        invalidation time before reading it from L2 again (the backplane makes it sooner);
        see :mod:`tieredcache.tiered.tags`.

    ``cache.events`` (:class:`~tieredcache.events.Events`) tells subscribers when the
    breaker opens or closes, a replay is done, the backplane resets L1 or a stale value is
    served; :meth:`stats` has the counters, :meth:`reset_stats` sets them to zero.
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
        breaker: CircuitBreaker | t.Any | None = DEFAULT,
        backplane: Backplane | None = None,
        jitter: float = 0.0,
        replay_limit: int = 10_000,
        tag_ttl: float = 1.0,
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
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ConfigurationError(f"jitter must be a fraction in [0, 1), not {jitter!r}")
        self.jitter = float(jitter)
        if breaker is DEFAULT:
            breaker = None if l2.local else CircuitBreaker(name=f"l2 {l2.name}")
        elif breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(f"breaker must be a CircuitBreaker or None, not {breaker!r}")
        self._offload = offload
        self._executor = executor
        self.on_partial_failure = on_partial_failure
        self.local = l1.local and l2.local
        self._counters = Counters(TIERED_COUNTERS)
        # The read path counts with incrementers: one atomic call per lookup.
        self._count_l1_hit = self._counters.incrementer("hits", "l1_hits")
        self._count_l2_hit = self._counters.incrementer("hits", "l2_hits")
        self._count_miss = self._counters.incrementer("misses")
        self._count_refill = self._counters.incrementer("refills")
        self._count_refill_skipped = self._counters.incrementer("refills_skipped")
        self._ordering = Ordering()
        self._reads = ReadFlights(self._ordering)
        self._sequential_read = type(self.read) is SequentialRead
        self._read_ctx = PolicyContext(None, None, l1.local, self._report_read, "get")
        self._check_values, self._check_codecs = self._checks()
        # With a NullBackend as L2 the composition is an L1-only cache: L1 decides add/incr.
        self._l2_stores_nothing = isinstance(l2, NullBackend)
        self.backplane = backplane
        self._own = OwnWrites(on_forget=self._forget_own)
        self._gate = L2Gate(
            l2,
            l1,
            self._ordering,
            self._counters,
            breaker=breaker,
            fail_open=bool(fail_open),
            replay_limit=replay_limit,
            backplane=backplane,
            on_partial_failure=self._report_l2_partial,
            own=self._own,
        )
        tag_seconds = validate_ttl(tag_ttl, name="tag_ttl")
        if tag_seconds is None or tag_seconds < 0:
            raise ConfigurationError(f"tag_ttl must be a number of seconds >= 0, not {tag_ttl!r}")
        self.tag_index = TagIndex(self, tag_seconds)
        self._tag_valid = self.tag_index.valid
        self._refresher = Refresher(self, self._gate, self._ordering, self._counters, self._flights)
        self.events = events = Events()
        self._gate.events = events
        if breaker is not None:
            name = breaker.name
            breaker.on_open(lambda: events.emit(BREAKER_OPENED, breaker=name))
            breaker.on_close(lambda: events.emit(BREAKER_CLOSED, breaker=name))
        if backplane is not None:
            backplane.bind(l2)  # server-assisted invalidation tracks the L2's key prefix
            if "on_message" in inspect.signature(backplane.subscribe).parameters:
                backplane.subscribe(
                    self._on_invalidate, self._on_reset, on_message=self._on_message
                )
            else:  # a backplane written against the older protocol: evictions only
                backplane.subscribe(self._on_invalidate, self._on_reset)

    # -- configuration helpers --------------------------------------------------------

    @property
    def offload(self) -> Offload:
        """The offload carrying this cache's background work."""
        if self._offload is not None:
            return self._offload
        from tieredcache.offload import default_offload

        return default_offload()

    @property
    def executor(self) -> concurrent.futures.Executor:
        """The executor running this cache's parallel legs."""
        # The process-wide pool is looked up on every use, never kept: after a fork the
        # child gets a pool of its own instead of one whose threads do not exist there.
        return self._executor if self._executor is not None else default_executor()

    @property
    def fail_open(self) -> bool:
        """True when L2 availability failures are absorbed (see the class docstring)."""
        return self._gate.fail_open

    @property
    def gate(self) -> L2Gate:
        """The :class:`~tieredcache.tiered.l2gate.L2Gate` every L2 call goes through."""
        return self._gate

    @property
    def ordering(self) -> Ordering:
        """The per-key :class:`~tieredcache.tiered.ordering.Ordering` of this composition."""
        return self._ordering

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The L2's circuit breaker, if any."""
        return self._gate.breaker

    @property
    def call_timeout(self) -> float | None:
        """The longest one call waits on L2 (nested compositions: their own bound)."""
        return self._gate.timeout

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

    def _checks(self) -> tuple[list[Serializer], list[EntryCodec]]:
        # The L2's own envelope codec checks a value by encoding the entry it will write, and
        # keeps the envelope on it (Entry.wire): the L2 write sends those bytes.
        serializers = self._serializers_to_check()
        codec = getattr(self.l2, "codec", None)
        if isinstance(codec, EntryCodec) and any(s is codec.serializer for s in serializers):
            rest = [s for s in serializers if s is not codec.serializer]
            return rest, [codec]
        return serializers, []

    def check_serializable(self, values: t.Iterable[t.Any]) -> None:
        """Raise :class:`~tieredcache.errors.SerializationError` unless every layer can
        serialize every value (before any layer is written)."""
        values = list(values)
        for serializer in (*self._check_values, *(c.serializer for c in self._check_codecs)):
            for value in values:
                serializer.dumps(value)

    def check_entries(self, entries: t.Iterable[Entry]) -> None:
        """:meth:`check_serializable` for the entries a write is about to store: L2's codec
        encodes each once, and the L2 write reuses the envelope."""
        for entry in entries:
            for codec in self._check_codecs:
                codec.encode_once(entry)
            for serializer in self._check_values:
                serializer.dumps(entry.value)

    def cap(self, entry: Entry, now: float) -> Entry:
        """The entry as L1 keeps it: no longer than ``l1_ttl``."""
        if self.l1_ttl is None:
            return entry
        limit = now + self.l1_ttl
        if entry.expires_at is not None and entry.expires_at <= limit:
            return entry
        return entry.replace(expires_at=limit)

    def make_entry(self, value: t.Any, ttl: t.Any) -> Entry | None:
        """The entry a write of ``value`` under ``ttl`` stores (``None``: store nothing)."""
        return self._new_entry(value, ttl)

    def _ttl_seconds(self, ttl: t.Any) -> float | None:
        seconds = self._resolve_ttl(ttl)
        if self.jitter and seconds is not None and seconds > 0:
            seconds *= 1.0 - self.jitter * random.random()
        return seconds

    # -- reporting --------------------------------------------------------------------

    def _report_read(self, tier: str, exc: BaseException) -> None:
        self._counters.slot()[_IDX[f"{tier}_read_errors"]] += 1
        logger.warning("tiered: %s read failed, counted as a miss: %r", tier, exc)

    def _report_l2_partial(self, tier: str, keys: t.Sequence[str], exc: BaseException) -> None:
        if self.on_partial_failure is not None:
            self.on_partial_failure(tier, keys, exc)

    def _write_context(self, keys: t.Sequence[str], operation: str) -> PolicyContext:
        def report(tier: str, exc: BaseException) -> None:
            self._counters.slot()[_IDX[f"{tier}_write_errors"]] += 1
            self._gate.log.warning(
                f"{tier}-{operation}",
                "tiered: %s %s of %d key(s) failed: %r",
                tier,
                operation,
                len(keys),
                exc,
            )
            if self.on_partial_failure is not None:
                try:
                    self.on_partial_failure(tier, list(keys), exc)
                except Exception:
                    logger.exception("tiered: on_partial_failure hook raised")

        if isinstance(self.write, SequentialWrite):
            return PolicyContext(None, None, self.l1.local, report, operation)
        offload = self.offload if isinstance(self.write, RaceWrite) else self._offload
        return PolicyContext(self.executor, offload, self.l1.local, report, operation)

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str, default: t.Any = None) -> t.Any:
        # get_entry() inlined: an L1 hit is one call into L1 and one atomic count.
        if self._sequential_read:
            try:
                entry = self.l1.get_entry(key)
            except Exception as exc:
                check_key(key)
                self._report_read("l1", tag_tier(exc, "l1"))
                entry = self._read_one_from_l2(key, exc)
            else:
                if entry is not None and (not entry.tags or self._tag_valid(entry)):
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
                check_key(key)
                self._report_read("l1", tag_tier(exc, "l1"))
                return self._read_one_from_l2(key, exc)
            if entry is not None and (not entry.tags or self._tag_valid(entry)):
                self._count_l1_hit()
                return entry
            return self._read_one_from_l2(key, None)
        check_key(key)
        return self._read_through([key]).get(key)

    def l1_entry(self, key: str) -> Entry | None:
        """L1's unexpired entry for ``key``; an L1 failure is a (counted) miss."""
        try:
            entry = self.l1.get_entry(key)
        except Exception as exc:
            self._report_read("l1", tag_tier(exc, "l1"))
            return None
        if entry is not None and entry.tags and not self.tag_index.valid(entry):
            return None
        return entry

    def _read_one_from_l2(self, key: str, l1_error: BaseException | None) -> Entry | None:
        """L1 missed (or failed on) ``key``: read it from L2 (or share a read in flight of
        it, see :mod:`.readflight`) and refill L1."""
        ordering = self._ordering
        token = ordering.begin_read_one(key)
        flight, leader = self._reads.join(key, token)
        entry: Entry | None = None
        try:
            try:
                if leader:
                    try:
                        entry = self._gate.read([key]).get(key)
                    except BaseException as exc:
                        leader = False
                        self._reads.land(key, flight, None, exc)
                        raise
                    if entry is not None and entry.tags and not self.tag_index.valid(entry):
                        entry = None
                else:
                    entry = self._shared_answer(key, flight)
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
                if leader and self.refill is Refill.ALWAYS and l1_error is None:
                    self._refill({key: token}, {key: entry})
        finally:
            if leader:
                self._reads.land(key, flight, entry)
            ordering.end_read_one(key, token)
        return entry

    def _shared_answer(self, key: str, flight: Flight) -> Entry | None:
        """Another caller's L2 read of ``key``: its answer, waiting at most the L2 timeout."""
        if flight.wait(self._gate.lock_timeout()):
            return flight.answer()
        exc = BackendTimeoutError(
            f"the shared l2 read of {key!r} did not finish in time", backend="l2"
        )
        if not self._gate.fail_open:
            raise exc
        self._gate.absorb("read", "read", [key], exc)
        return None

    def _shared_l2_leg(
        self, token_of: t.Mapping[str, ReadToken], shared_keys: set[str]
    ) -> t.Callable[[list[str]], dict[str, Entry]]:
        """The L2 leg of a batch read: lead the keys nobody reads yet, then share the rest
        (added to ``shared_keys``: their leader refills them)."""

        def read(wanted: list[str]) -> dict[str, Entry]:
            reads = self._reads
            led: dict[str, Flight] = {}
            shared: dict[str, Flight] = {}
            for key in wanted:
                flight, leader = reads.join(key, token_of[key])
                (led if leader else shared)[key] = flight
            found: dict[str, Entry] = {}
            if led:
                try:
                    found = self._read_l2(list(led))
                except BaseException as exc:
                    for key, flight in led.items():
                        reads.land(key, flight, None, exc)
                    raise
                for key, flight in led.items():
                    reads.land(key, flight, found.get(key))
            # Only now wait for others: a batch never waits while it leads (no cycles).
            shared_keys.update(shared)
            for key, flight in shared.items():
                entry = self._shared_answer(key, flight)
                if entry is not None:
                    found[key] = entry
            return found

        return read

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        wanted = unique_keys(keys)
        if not wanted:
            return {}
        return self._read_through(wanted)

    def _read_through(self, keys: list[str]) -> dict[str, Entry]:
        """Read ``keys`` through the read policy, count, and refill L1 from L2's answers."""
        tokens = self._ordering.begin_read(keys)
        failures: list[BaseException] = []

        def l1_leg(wanted: list[str]) -> dict[str, Entry]:
            try:
                return self.tag_index.keep_valid(self.l1.get_entries(wanted))
            except Exception as exc:
                failures.append(exc)
                raise

        try:
            ctx = self._read_ctx
            if not self.l1.local:
                ctx = PolicyContext(self.executor, None, False, self._report_read, "get")
            shared: set[str] = set()
            l2_leg = self._shared_l2_leg(dict(zip(keys, tokens)), shared)
            answer = self.read.execute(keys, l1_leg, l2_leg, ctx)
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
                led = {k: e for k, e in from_l2.items() if k not in shared}
                if led:
                    self._refill(dict(zip(keys, tokens)), led)
        finally:
            self._ordering.end_read(keys, tokens)
        return {k: e for k, (e, _) in answer.items()}

    def _read_l2(self, keys: list[str]) -> dict[str, Entry]:
        """L2's entries of ``keys``, without the ones whose tags were invalidated."""
        return self.tag_index.keep_valid(self._gate.read(keys))

    def _refill(self, token_of: t.Mapping[str, ReadToken], from_l2: dict[str, Entry]) -> None:
        """Copy L2's answers into L1, unless a write of the key began since the read did or
        waits for replay (its answer then came from the replay queue, not from L2)."""
        now = self._now()
        chosen = sorted(from_l2)
        locks = [token_of[k][0].locks[L1] for k in chosen]
        for lock in locks:
            lock.acquire()
        try:
            items = {}
            for key in chosen:
                if self._ordering.refill_allowed(token_of[key]) and not self._gate.pending(key):
                    items[key] = self.cap(from_l2[key], now)
            skipped = len(chosen) - len(items)
            if items:
                self.l1.set_entries(items)
            if len(chosen) == 1:
                (self._count_refill if items else self._count_refill_skipped)()
            else:
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

    def set(self, key: str, value: t.Any, ttl: t.Any = DEFAULT, *, tags: t.Any = ()) -> None:
        """Store ``value`` under ``key`` in both layers, through the write policy.

        ``tags`` (a collection of str) lets :meth:`invalidate_tags` remove the entry.
        Checked, stamped and encoded once: the key, the TTL and the tags are validated
        here, the clock is read once, one version is both the entry's and the write's place
        in the per-key ordering, and L2 receives the envelope the serializability check made.

        :raises InvalidKeyError: ``key`` is not a str, or ``tags`` not a collection of str.
        :raises SerializationError: a layer cannot serialize ``value``; nothing was written.
        """
        check_key(key)
        chosen = check_tags(tags) if tags else ()
        seconds = self._ttl_seconds(ttl)
        if seconds is not None and seconds <= 0:
            self._delete_keys([key])
            return
        now = self._now()
        version = next_version()
        entry = Entry(value, None if seconds is None else now + seconds, version, None, chosen)
        self.check_entries((entry,))
        self.write_entries({key: entry}, now, version)

    def set_entry(self, key: str, entry: Entry) -> None:
        self.set_entries({key: entry})

    def set_entries(self, items: t.Mapping[str, Entry]) -> None:
        check_keys(items)
        now = self._now()
        live = {k: e for k, e in items.items() if e.expires_at is None or e.expires_at > now}
        if live:
            self.check_entries(live.values())
            self.write_entries(live, now)
        if len(live) < len(items):
            self.delete_many([k for k in items if k not in live])

    def write_entries(self, live: dict[str, Entry], now: float, seq: int | None = None) -> None:
        """Write validated, unexpired ``live`` entries through the write policy (at ``seq``
        in the per-key ordering: a new version when not given)."""
        keys = list(live)
        gate = self._gate
        if seq is None:
            seq = next_version()
        with gate.operation(), self._ordering.write(keys, seq) as slot:
            leg1 = slot.leg(L1, self.write_l1({k: self.cap(e, now) for k, e in live.items()}))
            leg2 = gate.leg(slot, gate.set_op(live, slot.seq), set_replay(live))
            self.write.execute(leg1, leg2, self._write_context(keys, "set"))
        self._counters.slot()[_SETS] += len(keys)

    def add_entry(self, key: str, entry: Entry) -> bool:
        check_key(key)
        now = self._now()
        if entry.expires_at is not None and entry.expires_at <= now:
            return False
        self.check_entries((entry,))
        keys = [key]
        gate = self._gate
        l1_entry = self.cap(entry, now)
        with gate.operation(), self._ordering.write(keys, next_version()) as slot:
            if self._l2_stores_nothing:
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
                self._counters.slot()[_SETS] += 1
            return bool(added)

    def fill_entry(self, key: str, entry: Entry) -> Entry:
        """Store a value loaded after a miss, set-if-absent at L2; the entry now held.

        L2 decides: when the add wins, no other process can hold a copy of the key, so
        nothing is announced; when it loses (another process filled or wrote the key
        meanwhile), L2's entry is returned and copied into L1 instead. ``get_or_set``
        stores what its loader returns this way.
        """
        check_key(key)
        now = self._now()
        if entry.expires_at is not None and entry.expires_at <= now:
            return entry
        if self._l2_stores_nothing:
            self.set_entries({key: entry})
            return entry
        self.check_serializable([entry.value])
        keys = [key]
        gate = self._gate
        held: Entry | None = entry
        added = fallback = False
        with gate.operation(), self._ordering.write(keys, next_version()) as slot:
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
                    if held is not None and held.tags and not self.tag_index.valid(held):
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
                slot.run(L1, self.write_l1({key: self.cap(held, now)}))
                if held is entry:
                    self._counters.slot()[_SETS] += 1
                return held
        if fallback:  # L2 unavailable (replayed later), or holding an invalidated entry
            self.write_entries({key: entry}, now)
        # Otherwise L2 lost the winner meanwhile (expired, deleted): nothing is stored.
        return entry

    def delete(self, key: str) -> bool:
        check_key(key)
        return bool(self._delete_keys([key]))

    def delete_many(self, keys: t.Iterable[str]) -> int:
        """Remove ``keys`` from both layers (L2 first); how many either layer held."""
        wanted = unique_keys(keys)
        if not wanted:
            return 0
        return len(self._delete_keys(wanted))

    def delete_each(self, keys: t.Iterable[str]) -> list[str]:
        """Remove ``keys`` from both layers (L2 first); the ones either layer held."""
        wanted = unique_keys(keys)
        if not wanted:
            return []
        return self._delete_keys(wanted)

    def _delete_keys(self, keys: list[str]) -> list[str]:
        """Delete from L2, then L1, so that a concurrent refill cannot bring a key back."""
        errors: dict[str, BaseException] = {}
        held: set[str] = set()
        gate = self._gate
        with gate.operation(), self._ordering.write(keys, next_version()) as slot:
            try:
                result = gate.run(slot, gate.delete_op(slot.seq), delete_replay)
                held.update(t.cast("list[str]", result or ()))
            except Exception as exc:
                errors["l2"] = tag_tier(exc, "l2")
            try:
                held.update(t.cast("list[str]", slot.run(L1, self.l1.delete_each) or ()))
            except Exception as exc:
                errors["l1"] = tag_tier(exc, "l1")
        self._counters.slot()[_DELETES] += len(keys)
        if len(errors) == 2:
            raise BothLayersFailed(errors["l1"], errors["l2"], operation="delete")
        for failure in errors.values():
            raise failure
        return [key for key in keys if key in held]

    def touch_entry(self, key: str, expires_at: float | None) -> bool:
        check_key(key)
        now = self._now()
        if expires_at is not None and expires_at <= now:
            return self.delete(key)
        keys = [key]
        l1_expiry = self.cap(Entry(None, expires_at), now).expires_at
        gate = self._gate
        with gate.operation(), self._ordering.write(keys, next_version()) as slot:
            touched2 = gate.run(
                slot, gate.touch_op(key, expires_at, slot.seq), touch_replay(expires_at), mark=False
            )
            touched1 = slot.run(L1, lambda _: self.l1.touch_entry(key, l1_expiry), mark=False)
        return bool(touched2) or bool(touched1)

    def _incr(self, key: str, delta: int) -> int:
        if self._l2_stores_nothing:
            return self.l1.incr(key, delta)
        keys = [key]
        gate = self._gate
        with gate.operation(), self._ordering.write(keys, next_version()) as slot:

            def incr_l2(_: list[str]) -> int:
                try:
                    value: int = gate.call(self.l2.incr, key, delta)
                except KeyError:
                    # L1 may hold what L2 lost (eviction, Refill.NEVER): seed L2 from it.
                    held = self.l1.get_entry(key)
                    if held is None:
                        raise
                    gate.call(self.l2.add_entry, key, held)
                    value = gate.call(self.l2.incr, key, delta)
                gate.landed("set", keys, slot.seq)
                return value

            value = gate.run(slot, incr_l2, None, supersede=False)
            # L1 drops its copy; the next read refills it with L2's exact entry.
            slot.run(L1, self.l1.delete_many)
            return t.cast(int, value)

    def _clear(self) -> None:
        seq = self._ordering.cleared = next_version()
        errors: dict[str, BaseException] = {}
        gate = self._gate
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

    # -- loading ----------------------------------------------------------------------

    def get_or_set(
        self,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any = DEFAULT,
        *,
        wait_timeout: float | None = None,
        stale_ttl: float | None = None,
        lock: t.Any = None,
        tags: t.Any = (),
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        refresh_ahead: float | None = None,
    ) -> t.Any:
        """The value under ``key``; on a miss, ``loader()``'s result, stored and returned.

        See :meth:`.Refresher.get_or_set` for single-flight, ``stale_ttl`` and ``lock``,
        and :mod:`.loading` for ``tags``, ``soft_timeout``, ``hard_timeout``,
        ``refresh_ahead`` and :class:`~tieredcache.Loaded` results.

        :raises LoaderTimeoutError: ``hard_timeout`` passed before the loader finished.
        """
        options = LoadOptions(tags, soft_timeout, hard_timeout, refresh_ahead)
        return self._refresher.get_or_set(
            key,
            loader,
            ttl,
            wait_timeout=wait_timeout,
            stale_ttl=stale_ttl,
            lock=lock,
            options=options,
        )

    # -- background work and life cycle -----------------------------------------------

    def replay(self) -> int:
        """Replay now the L2 writes and deletes that failed under fail-open; how many landed.

        They are replayed in the background by themselves as soon as L2 answers again.
        """
        return self._gate.replay()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until the offload has finished this cache's background writes."""
        return self.offload.drain(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no failed write waits for replay and every announcement is sent."""
        return self._gate.wait_idle(timeout)

    def _close(self) -> None:
        """Finish background writes, replay and announce (bounded), then close the layers."""
        self.drain()
        self._gate.close()
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

    def _on_invalidate(self, kind: str, keys: list[str]) -> None:
        """Another process changed ``keys``: drop this process's L1 copies."""
        self._counters.slot()[_INVALIDATIONS] += 1
        self.tag_index.forget(keys)
        if kind == "clear":
            self._on_reset()
            return
        if not keys:
            return
        try:
            with self._ordering.write(keys, next_version(), legs=1) as slot:
                slot.run(L1, self.l1.delete_many)
        except Exception:
            logger.exception("tiered: evicting invalidated keys from l1 failed")

    def _on_message(self, message: Message) -> None:
        """A backplane message: ours confirms our write; another's updates or evicts."""
        if message.own:
            if message.kind == "set":
                self._own.confirm(message.keys, message.version)
            return
        if message.kind == "clear" or not message.keys:
            self._on_invalidate(message.kind, message.keys)
            return
        self._counters.slot()[_INVALIDATIONS] += 1
        try:
            apply_message(self, self._own, message)
        except Exception:
            logger.exception("tiered: applying a backplane message to l1 failed")
            self._on_reset()

    def _forget_own(self, key: str) -> None:
        """An own write is no longer tracked: drop the L1 copy rather than risk it."""
        self._on_invalidate("delete", [key])

    def _on_reset(self) -> None:
        """Invalidations may have been missed: nothing in L1 can be trusted any more."""
        self.tag_index.reset()
        self._ordering.l1_reset = next_version()
        try:
            self.l1.clear()
        except Exception:
            logger.exception("tiered: flushing l1 after a backplane reset failed")
        self.events.emit(BACKPLANE_RESET)

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict[str, t.Any]:
        """The composition's counters, plus ``l1`` and ``l2`` with each layer's stats."""
        figures = super().stats()
        figures["l1"] = self.l1.stats()
        figures["l2"] = self.l2.stats()
        figures["in_flight_keys"] = len(self._ordering)
        figures.update(self._reads.stats())
        figures.update(self._gate.stats())
        if self._offload is not None:
            figures["offload"] = self._offload.stats()
        if self.backplane is not None:
            figures["backplane"] = self.backplane.stats()
        return figures

    def wrap_calls(
        self,
        l2: t.Callable[[str, t.Callable[[], t.Any]], t.Any] | None = None,
        loader: t.Callable[[str, t.Callable[[], t.Any]], t.Any] | None = None,
    ) -> None:
        """Run each L2 call as ``l2(method_name, call)`` and each ``get_or_set`` loader as
        ``loader(key, call)`` (for tracing, see :mod:`tieredcache.contrib.opentelemetry`)."""
        if l2 is not None:
            self._gate.wrap_calls(l2)
        if loader is not None:
            plain = self._refresher.run_loader

            def run_loader(key: str, load: t.Callable[[], t.Any]) -> t.Any:
                return loader(key, lambda: plain(key, load))

            self._refresher.run_loader = run_loader  # type: ignore[assignment]

    def reset_stats(self) -> None:
        """Set the composition's counters, and each layer's, to zero."""
        super().reset_stats()
        self.l1.reset_stats()
        self.l2.reset_stats()
        self._reads.reset()
        self._gate.reset_stats()

    def _check_invariants(self) -> None:
        """Assert internal consistency when no operation is in flight (for tests)."""
        assert len(self._ordering) == 0, "ordering state left behind"
        assert len(self._reads) == 0, "read flights left behind"
        for layer in (self.l1, self.l2):
            check = getattr(layer, "_check_invariants", None)
            if check is not None:
                check()

    def __repr__(self) -> str:
        return (
            f"<TieredCache l1={self.l1!r} l2={self.l2!r} read={self.read!r} "
            f"write={self.write!r} refill={self.refill.name}>"
        )
