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
import types
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
from tieredcache.errors import ConfigurationError
from tieredcache.events import BREAKER_CLOSED
from tieredcache.events import BREAKER_OPENED
from tieredcache.events import Events
from tieredcache.executor import default_executor
from tieredcache.keys import check_keys
from tieredcache.offload.pool import default_offload
from tieredcache.policies.base import tag_tier
from tieredcache.policies.read import ReadPolicy
from tieredcache.policies.read import SequentialRead
from tieredcache.policies.refill import Refill
from tieredcache.policies.write import WritePolicy
from tieredcache.serializers import Serializer
from tieredcache.stats import TIERED_COUNTERS
from tieredcache.stats import TIERED_INDEX
from tieredcache.stats import Counters
from tieredcache.tiered.checks import WriteChecks
from tieredcache.tiered.checks import check_policies
from tieredcache.tiered.checks import layer_serializers
from tieredcache.tiered.coherence import Listener
from tieredcache.tiered.features import CacheFeatures
from tieredcache.tiered.l2gate import L2Gate
from tieredcache.tiered.l2gate import PartialFailureHook
from tieredcache.tiered.loading import LoadOptions
from tieredcache.tiered.ordering import Ordering
from tieredcache.tiered.readflight import ReadFlights
from tieredcache.tiered.reads import Reader
from tieredcache.tiered.refresh import Refresher
from tieredcache.tiered.tags import TagIndex
from tieredcache.tiered.tags import check_tags
from tieredcache.tiered.writes import Writer

if t.TYPE_CHECKING:
    from tieredcache.backplane import Backplane
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
        self.read, self.write = check_policies(read, write, refill, offload)
        self.refill = refill
        self.l1_ttl = validate_ttl(l1_ttl, name="l1_ttl")
        if self.l1_ttl is not None and self.l1_ttl <= 0:
            raise ConfigurationError("l1_ttl must be positive or None")
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
        self._ordering = Ordering()
        self._reads = ReadFlights(self._ordering)
        self._sequential_read = type(self.read) is SequentialRead
        self._checks = WriteChecks(self)
        # With a NullBackend as L2 the composition is an L1-only cache: L1 decides add/incr.
        self._l2_stores_nothing = isinstance(l2, NullBackend)
        self.backplane = backplane
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
        )
        tag_seconds = validate_ttl(tag_ttl, name="tag_ttl")
        if tag_seconds is None or tag_seconds < 0:
            raise ConfigurationError(f"tag_ttl must be a number of seconds >= 0, not {tag_ttl!r}")
        self.tag_index = TagIndex(self, tag_seconds)
        self._tag_valid = self.tag_index.valid
        self._writer = Writer(
            self,
            l1=l1,
            l2=l2,
            gate=self._gate,
            ordering=self._ordering,
            counters=self._counters,
            policy=self.write,
            l2_stores_nothing=self._l2_stores_nothing,
        )
        self._reader = Reader(
            self,
            l1=l1,
            gate=self._gate,
            ordering=self._ordering,
            flights=self._reads,
            counters=self._counters,
            tag_index=self.tag_index,
            policy=self.read,
            refills=refill is Refill.ALWAYS,
            report=self._report_read,
        )
        self._refresher = Refresher(self, self._gate, self._ordering, self._counters, self._flights)
        self.events = events = Events()
        self._listener = Listener(
            self,
            l1=l1,
            ordering=self._ordering,
            counters=self._counters,
            tag_index=self.tag_index,
            events=events,
        )
        self._gate.events = events
        if self._sequential_read and type(self).get is TieredCache.get:
            reader = self._reader.hit_reader(types.MethodType(TieredCache.get, self))
            if reader is not None:
                self.get = reader  # type: ignore[method-assign]
        if breaker is not None:
            name = breaker.name
            breaker.on_open(lambda: events.emit(BREAKER_OPENED, breaker=name))
            breaker.on_close(lambda: events.emit(BREAKER_CLOSED, breaker=name))
        if backplane is not None:
            backplane.bind(l2)  # server-assisted invalidation tracks the L2's key prefix
            listener = self._listener
            if "on_message" in inspect.signature(backplane.subscribe).parameters:
                backplane.subscribe(
                    listener.on_invalidate, listener.on_reset, on_message=listener.on_message
                )
            else:  # a backplane written against the older protocol: evictions only
                backplane.subscribe(listener.on_invalidate, listener.on_reset)

    # -- configuration helpers --------------------------------------------------------

    @property
    def offload(self) -> Offload:
        """The offload carrying this cache's background work."""
        if self._offload is not None:
            return self._offload
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
        return [*layer_serializers(self.l1), *layer_serializers(self.l2)]

    def check_serializable(self, values: t.Iterable[t.Any]) -> None:
        """Raise :class:`~tieredcache.errors.SerializationError` unless every layer can
        serialize every value (before any layer is written)."""
        self._checks.serializable(values)

    def check_entries(self, items: t.Mapping[str, Entry]) -> None:
        """:meth:`check_serializable` (L2's codec encodes each entry once), then L2's admit."""
        self._checks.entries(items.values())
        self.l2.admit(items)

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

    # -- reads ------------------------------------------------------------------------

    def get(self, key: str, default: t.Any = None) -> t.Any:
        # get_entry() inlined. An L1 that offers a hit reader has it take this method's
        # place on the instance (see __init__); it comes here for what is not a hit.
        if self._sequential_read:
            try:
                entry = self.l1.get_entry(key)
            except Exception as exc:
                check_key(key)
                self._report_read("l1", tag_tier(exc, "l1"))
                entry = self._reader.from_l2(key, exc)
            else:
                if entry is not None and (not entry.tags or self._tag_valid(entry)):
                    self._count_l1_hit()
                    return entry.value
                entry = self._reader.from_l2(key, None)
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
                return self._reader.from_l2(key, exc)
            if entry is not None and (not entry.tags or self._tag_valid(entry)):
                self._count_l1_hit()
                return entry
            return self._reader.from_l2(key, None)
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

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        wanted = unique_keys(keys)
        if not wanted:
            return {}
        return self._read_through(wanted)

    def _read_through(self, keys: list[str]) -> dict[str, Entry]:
        return self._reader.through(keys)

    # -- writes -----------------------------------------------------------------------

    def write_l1(self, items: dict[str, Entry]) -> t.Callable[[list[str]], object]:
        """The L1 part of a set of ``items``."""
        return self._writer.write_l1(items)

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
        self.check_entries({key: entry})
        self.write_entries({key: entry}, now, version)

    def set_entry(self, key: str, entry: Entry) -> None:
        self.set_entries({key: entry})

    def set_entries(self, items: t.Mapping[str, Entry]) -> None:
        check_keys(items)
        now = self._now()
        live = {k: e for k, e in items.items() if e.expires_at is None or e.expires_at > now}
        if live:
            self.check_entries(live)
            self.write_entries(live, now)
        if len(live) < len(items):
            self.delete_many([k for k in items if k not in live])

    def write_entries(self, live: dict[str, Entry], now: float, seq: int | None = None) -> None:
        """Write validated, unexpired ``live`` entries through the write policy (at ``seq``
        in the per-key ordering: a new version when not given)."""
        self._writer.write_entries(live, now, seq)

    def add_entry(self, key: str, entry: Entry) -> bool:
        return self._writer.add(key, entry)

    def fill_entry(self, key: str, entry: Entry) -> Entry:
        """Store a value loaded after a miss, set-if-absent at L2; the entry now held.

        See :meth:`.Writer.fill`: when the add wins nothing is announced; when it loses,
        L2's entry is returned and copied into L1 instead.
        """
        return self._writer.fill(key, entry)

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
        return self._writer.delete_keys(keys)

    def touch_entry(self, key: str, expires_at: float | None) -> bool:
        return self._writer.touch(key, expires_at)

    def _incr(self, key: str, delta: int) -> int:
        return self._writer.incr(key, delta)

    def _clear(self) -> None:
        self._writer.clear()

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
