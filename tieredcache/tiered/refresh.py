"""
Loading values
==============

:class:`Refresher` runs a composition's ``get_or_set``: single-flight loading, fail-safe
stale-while-revalidate and cross-process single-flight with a lock.

A value written with ``stale_ttl`` is fresh for ``ttl`` seconds, then stale but servable for
``stale_ttl`` more. A stale read returns at once and refreshes the key in the background
through the offload, deduplicated per key; the refresh is ordered like any write of this
process, as of the moment it was scheduled, so it never overwrites a newer value or brings
back a deleted key.

``get_or_set`` reads L2 at most once before it runs the loader (the single-flight leader
checks L1 again, not L2), and all of its L2 calls form one operation of the
:class:`~.l2gate.L2Gate`: once L2 failed for availability, the rest fails fast, so a call
waits at most about one L2 timeout.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import typing as t

from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.entry import validate_ttl
from tieredcache.errors import OffloadError
from tieredcache.events import STALE_SERVED
from tieredcache.executor import marked
from tieredcache.locks import SingleFlight
from tieredcache.offload import OffloadKey
from tieredcache.stats import TIERED_INDEX
from tieredcache.tiered.loading import NO_OPTIONS
from tieredcache.tiered.loading import LoadOptions
from tieredcache.tiered.loading import background_run
from tieredcache.tiered.loading import resolve
from tieredcache.tiered.loading import wait_bounded
from tieredcache.tiered.ordering import L1
from tieredcache.tiered.ordering import WriteSlot
from tieredcache.tiered.replay import set_replay

if t.TYPE_CHECKING:
    from tieredcache.stats import Counters
    from tieredcache.tiered.cache import TieredCache
    from tieredcache.tiered.l2gate import L2Gate
    from tieredcache.tiered.ordering import Ordering

__all__ = ["Refresher"]

logger = logging.getLogger("tieredcache")

_STALE_HITS = TIERED_INDEX["stale_hits"]
_REFRESHES = TIERED_INDEX["refreshes"]
_REFRESH_ERRORS = TIERED_INDEX["refresh_errors"]


class Refresher:
    """Loads values for one :class:`~tieredcache.TieredCache`. Thread-safe."""

    def __init__(
        self,
        cache: TieredCache,
        gate: L2Gate,
        ordering: Ordering,
        counters: Counters,
        flights: SingleFlight,
    ) -> None:
        self.cache = cache
        self.gate = gate
        self.ordering = ordering
        self.counters = counters
        self.flights = flights
        self._lock = threading.Lock()
        self._pending: dict[str, concurrent.futures.Future[t.Any]] = {}

    def run_loader(self, key: str, loader: t.Callable[[], t.Any]) -> t.Any:
        """Call ``loader()`` for ``key`` (replaced on the instance to trace loaders)."""
        return loader()

    def get_or_set(
        self,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any = DEFAULT,
        *,
        wait_timeout: float | None = None,
        stale_ttl: float | None = None,
        lock: t.Any = None,
        options: LoadOptions = NO_OPTIONS,
    ) -> t.Any:
        """The value under ``key``; on a miss, ``loader()``'s result, stored and returned.

        ``options`` carries the tags and loader controls (:mod:`.loading`).

        Single-flight in the process: concurrent callers on a missing key run the loader
        once and all receive its result; if it raises, every waiting caller gets the same
        exception, and the next call tries again. Across processes too when ``lock`` is a
        :class:`~tieredcache.redis.lock.RedisLock`: one process runs the loader, the others
        wait up to the lock's ``wait_timeout`` and then read the cache, raising
        :class:`~tieredcache.errors.LockTimeoutError` if it is still empty.

        With ``stale_ttl`` the value is fresh for ``ttl`` seconds and then stale, but still
        served, for ``stale_ttl`` more: a stale read returns at once and refreshes the value
        in the background, once per key however many readers see it. If the refresh fails
        the stale value keeps being served until it expires (the maximum age is ``ttl +
        stale_ttl``); after that a failing loader raises to the caller.

        :param wait_timeout: how long a caller waits for another's loader (``None``: as
            long as the loader takes).
        :raises LockTimeoutError: ``wait_timeout`` passed.
        """
        cache = self.cache
        stale_ttl = validate_ttl(stale_ttl, name="stale_ttl")
        with self.gate.operation():
            entry = cache.get_entry(key)
            if entry is not None:
                now = cache.timer()
                if entry.stale_at is not None and entry.stale_at <= now:
                    self.counters.slot()[_STALE_HITS] += 1
                    cache.events.emit(STALE_SERVED, key=key)
                    wait = options.stale_wait
                    # Past stale_at but not past the TTL: a refresh ahead, never waited for.
                    fresh_until = entry.expires_at
                    if fresh_until is not None and stale_ttl is not None:
                        fresh_until -= stale_ttl
                    if wait is None or (fresh_until is not None and now < fresh_until):
                        self._schedule_refresh(key, loader, ttl, stale_ttl, options)
                        return entry.value
                    return self._refresh_within(key, entry.value, loader, ttl, stale_ttl, options)
                return entry.value

            def load() -> t.Any:
                # A leader that finished just now stored its value in L1 too: L2 was
                # already asked once by this call.
                again = cache.l1_entry(key)
                if again is not None:
                    return again.value
                if lock is None:
                    return self._load_and_store(key, loader, ttl, stale_ttl, options)
                # One process at a time loads: whoever takes the lock checks again and
                # loads; the others wait for it, read what it stored, and contend again.
                return lock.single_flight(
                    key,
                    lambda: cache.get_entry(key),
                    lambda: self._load_and_store(key, loader, ttl, stale_ttl, options),
                )

            if options.hard_timeout is not None:
                bounded = load
                return self.flights.run(
                    key,
                    lambda: wait_bounded(bounded, options.hard_timeout, repr(key)),
                    wait_timeout,
                )
            return self.flights.run(key, load, wait_timeout)

    def entry_with_stale(
        self,
        value: t.Any,
        ttl: t.Any,
        stale_ttl: float | None,
        options: LoadOptions = NO_OPTIONS,
    ) -> Entry | None:
        """The entry of a loaded ``value``: fresh for ``ttl``, then stale for ``stale_ttl``
        (due for a refresh after ``refresh_ahead`` of ``ttl``), carrying the options' tags.

        A :class:`~.loading.Loaded` value sets its own TTL and tags; ``None`` when nothing
        is to be stored.
        """
        value, ttl, tags, store = resolve(value, ttl, options.tags)
        if not store:
            return None
        entry = self.cache.make_entry(value, ttl)
        if entry is None:
            return None
        entry.tags = tags
        if entry.expires_at is None:
            return entry
        stale_at = None
        if options.refresh_ahead is not None:
            now = self.cache.timer()
            stale_at = now + options.refresh_ahead * (entry.expires_at - now)
        if stale_ttl is None or stale_ttl <= 0:
            if stale_at is not None:
                entry.stale_at = stale_at
            return entry
        if stale_at is None:
            stale_at = entry.expires_at
        return Entry(value, entry.expires_at + stale_ttl, entry.version, stale_at, tags)

    def _load_and_store(
        self,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any,
        stale_ttl: float | None,
        options: LoadOptions = NO_OPTIONS,
    ) -> t.Any:
        result = self.run_loader(key, loader)
        value, _, _, store = resolve(result, ttl, options.tags)
        if not store:
            return value
        entry = self.entry_with_stale(result, ttl, stale_ttl, options)
        if entry is None:
            self.cache.delete(key)
            return value
        # Set-if-absent at L2: a fill needs no announcement, and when another process
        # filled the key first, its value is the one every process sees.
        return self.cache.fill_entry(key, entry).value

    def _schedule_refresh(
        self,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any,
        stale_ttl: float | None,
        options: LoadOptions = NO_OPTIONS,
    ) -> None:
        # The refresh is a write ordered as of now: a set or delete of the key made while
        # the loader runs is newer, so the refreshed value never overwrites it.
        cache = self.cache
        slot = self.ordering.write([key], next_version())

        def refresh() -> None:
            with slot:
                try:
                    self._refresh(slot, key, loader, ttl, stale_ttl, options)
                except Exception as exc:
                    self.counters.slot()[_REFRESH_ERRORS] += 1
                    logger.warning(
                        "tiered: refreshing %r failed; serving the stale value: %r", key, exc
                    )

        try:
            accepted = cache.offload.register(OffloadKey.keyed(key, "refresh"), marked(refresh))
        except OffloadError:
            accepted = False
        if not accepted:
            slot.close()  # deduplicated (a refresh of the key is already running) or refused

    def _refresh(
        self,
        slot: WriteSlot,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any,
        stale_ttl: float | None,
        options: LoadOptions = NO_OPTIONS,
    ) -> t.Any:
        cache = self.cache
        result = self.run_loader(key, loader)
        value = resolve(result, ttl, options.tags)[0]
        entry = self.entry_with_stale(result, ttl, stale_ttl, options)
        if entry is None:
            return value
        cache.check_serializable([entry.value])
        l1_entry = cache.cap(entry, cache.timer())
        gate = self.gate
        items = {key: entry}
        with gate.operation():
            gate.run(slot, gate.set_op(items, slot.seq), set_replay(items))
            slot.run(L1, cache.write_l1({key: l1_entry}))
        self.counters.slot()[_REFRESHES] += 1
        return value

    def _refresh_within(
        self,
        key: str,
        stale: t.Any,
        loader: t.Callable[[], t.Any],
        ttl: t.Any,
        stale_ttl: float | None,
        options: LoadOptions,
    ) -> t.Any:
        """Refresh ``key`` now and wait up to the soft timeout for it: its value if it came
        in time, else ``stale``; the refresh goes on and stores its result as an ordered
        write (as of now), once per key however many readers wait."""
        with self._lock:
            future = self._pending.get(key)
            if future is None:
                slot = self.ordering.write([key], next_version())

                def refresh() -> t.Any:
                    try:
                        with slot:
                            return self._refresh(slot, key, loader, ttl, stale_ttl, options)
                    except Exception as exc:
                        self.counters.slot()[_REFRESH_ERRORS] += 1
                        logger.warning(
                            "tiered: refreshing %r failed; serving the stale value: %r", key, exc
                        )
                        raise
                    finally:
                        with self._lock:
                            self._pending.pop(key, None)

                try:
                    future = self._pending[key] = background_run(refresh)
                except BaseException:
                    slot.close()
                    raise
        try:
            return future.result(options.stale_wait)
        except Exception:  # late or failed: the stale value is the fail-safe answer
            return stale
