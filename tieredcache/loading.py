"""Loading values: ``get_or_set`` with stale-while-revalidate, fail-safe serving and
cross-process single-flight, and TTL jitter.

A value written with ``stale_ttl`` is fresh for ``ttl`` seconds, then stale but servable
for ``stale_ttl`` more. A stale read returns at once and refreshes the key in the
background through the offload, deduplicated per key; the refresh is ordered like any write
of this process, so it never overwrites a newer value or brings back a deleted key.
"""

from __future__ import annotations

import logging
import random
import typing as t

from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.entry import validate_ttl
from tieredcache.errors import OffloadError
from tieredcache.executor import marked
from tieredcache.offload import OffloadKey
from tieredcache.stats import TIERED_INDEX

__all__ = ["RefreshMixin"]

logger = logging.getLogger("tieredcache")

_L1, _L2 = 0, 1
_STALE_HITS = TIERED_INDEX["stale_hits"]
_REFRESHES = TIERED_INDEX["refreshes"]
_REFRESH_ERRORS = TIERED_INDEX["refresh_errors"]


class RefreshMixin:
    """The part of :class:`~tieredcache.TieredCache` that loads values.

    Its methods run on a ``TieredCache`` and use its internals; they are typed ``Any``
    because a mixin cannot name the class it is mixed into.
    """

    def _ttl_seconds(self: t.Any, ttl: t.Any) -> float | None:
        seconds: float | None = self._resolve_ttl(ttl)
        if self.jitter and seconds is not None and seconds > 0:
            seconds *= 1.0 - self.jitter * random.random()
        return seconds

    def get_or_set(
        self: t.Any,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any = DEFAULT,
        *,
        wait_timeout: float | None = None,
        stale_ttl: float | None = None,
        lock: t.Any = None,
    ) -> t.Any:
        """The value under ``key``; on a miss, ``loader()``'s result, stored and returned.

        Single-flight in the process (see :meth:`Backend.get_or_set`), and across
        processes when ``lock`` is a :class:`~tieredcache.redislock.RedisLock`: one process
        runs the loader, the others wait up to the lock's ``wait_timeout`` and then read the
        cache, raising :class:`~tieredcache.errors.LockTimeoutError` if it is still empty.

        With ``stale_ttl`` the value is fresh for ``ttl`` seconds and then stale, but still
        served, for ``stale_ttl`` more: a stale read returns at once and refreshes the value
        in the background, once per key however many readers see it. If the refresh fails
        the stale value keeps being served until it expires (the maximum age is ``ttl +
        stale_ttl``); after that a failing loader raises to the caller.
        """
        stale_ttl = validate_ttl(stale_ttl, name="stale_ttl")
        entry = self.get_entry(key)
        if entry is not None:
            if entry.stale_at is not None and entry.stale_at <= self._now():
                self._counters.slot()[_STALE_HITS] += 1
                self._schedule_refresh(key, loader, ttl, stale_ttl)
            return entry.value

        def load() -> t.Any:
            again = self.get_entry(key)
            if again is not None:
                return again.value
            if lock is None:
                return self._load_and_store(key, loader, ttl, stale_ttl)
            # One process at a time loads: whoever takes the lock checks again and loads;
            # the others wait for it, read what it stored, and contend again on a miss.
            return lock.single_flight(
                key,
                lambda: self.get_entry(key),
                lambda: self._load_and_store(key, loader, ttl, stale_ttl),
            )

        return self._flights.run(key, load, wait_timeout)

    def _entry_with_stale(
        self: t.Any, value: t.Any, ttl: t.Any, stale_ttl: float | None
    ) -> Entry | None:
        entry: Entry | None = self._new_entry(value, ttl)
        if entry is None or stale_ttl is None or stale_ttl <= 0 or entry.expires_at is None:
            return entry
        return Entry(value, entry.expires_at + stale_ttl, entry.version, entry.expires_at)

    def _load_and_store(
        self: t.Any,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any,
        stale_ttl: float | None,
    ) -> t.Any:
        value = loader()
        entry = self._entry_with_stale(value, ttl, stale_ttl)
        if entry is None:
            self.delete(key)
        else:
            self.set_entry(key, entry)
        return value

    def _schedule_refresh(
        self: t.Any,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any,
        stale_ttl: float | None,
    ) -> None:
        # The refresh is a write ordered as of now: a set or delete of the key made while
        # the loader runs is newer, so the refreshed value never overwrites it.
        seq = next_version()
        keys = [key]
        states = self._ordering.begin_write(keys, seq)

        def refresh() -> None:
            legs_run = False
            try:
                value = loader()
                entry = self._entry_with_stale(value, ttl, stale_ttl)
                if entry is None:
                    return
                self._check_serializable([entry.value])
                now = self._now()
                l1_entry = self._cap(entry, now)
                legs_run = True
                try:
                    self._guarded(
                        _L2, keys, states, seq, lambda c: self._l2_set(c, {key: entry}, seq)
                    )
                finally:
                    self._ordering.end_leg(keys, states)
                try:
                    self._guarded(_L1, keys, states, seq, self._write_l1({key: l1_entry}))
                finally:
                    self._ordering.end_leg(keys, states)
                self._counters.slot()[_REFRESHES] += 1
                self._publish("set", keys, seq)
            except Exception as exc:
                self._counters.slot()[_REFRESH_ERRORS] += 1
                logger.warning(
                    "tiered: refreshing %r failed; serving the stale value: %r", key, exc
                )
            finally:
                if not legs_run:
                    self._ordering.end_leg(keys, states)
                    self._ordering.end_leg(keys, states)

        try:
            accepted = self.offload.register(OffloadKey.keyed(key, "refresh"), marked(refresh))
        except OffloadError:
            accepted = False
        if not accepted:
            # Deduplicated (a refresh of the key is already running) or refused.
            self._ordering.end_leg(keys, states)
            self._ordering.end_leg(keys, states)
