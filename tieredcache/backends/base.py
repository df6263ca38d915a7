"""The backend contract: the hooks a store implements and the entry-level API over them.

A backend stores one layer. It implements a small set of protected hooks (``_get``,
``_set``, ``_add``, ...); this base class turns them into the public entry-level methods
that a composition calls (:meth:`Backend.get_entry`, :meth:`Backend.set_entry`, ...). It
never returns an expired entry, counts hits, misses and errors, and translates driver
errors into :class:`~tieredcache.errors.BackendError` at one boundary. The friendly API
users call (:meth:`Backend.get`, :meth:`Backend.set`, :meth:`Backend.get_or_set`, ...) and
its TTL validation come from :class:`~tieredcache.api.FriendlyAPI`; the key rules from
:mod:`tieredcache.keys`.
"""

from __future__ import annotations

import logging
import time
import typing as t

from tieredcache.api import FriendlyAPI
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import validate_ttl
from tieredcache.errors import BackendError
from tieredcache.errors import DeserializationError
from tieredcache.errors import TieredCacheError
from tieredcache.errors import UnsupportedOperationError
from tieredcache.keyglob import compile_glob
from tieredcache.keys import check_key
from tieredcache.keys import unique_keys
from tieredcache.locks import SingleFlight
from tieredcache.serializers import EntryCodec
from tieredcache.stats import COUNTERS
from tieredcache.stats import Counters

__all__ = [
    "CORRUPT",
    "COUNTERS",
    "DELETES",
    "ERRORS",
    "HITS",
    "MISSES",
    "SETS",
    "Backend",
    "check_key",
    "unique_keys",
]

logger = logging.getLogger("tieredcache")

#: The index of each of :data:`COUNTERS` in a counter slot.
HITS, MISSES, ERRORS, CORRUPT, SETS, DELETES = range(len(COUNTERS))

T = t.TypeVar("T")

_PATTERN_BATCH = 500  # keys deleted per batch by invalidate_pattern


class Backend(FriendlyAPI):
    """Base class of every storage layer, and of :class:`~tieredcache.TieredCache`.

    Subclasses implement the protected hooks; the defaults of the ``_many`` hooks loop
    over the single-key ones, and drivers override them with batch commands. Every
    backend is thread-safe.

    :param default_ttl: the TTL in seconds used when a call passes none (``None`` = forever).
    :param timer: the clock, in epoch seconds (``time.time``); tests pass a fake one.
    """

    #: A short name used in errors, logs and stats.
    name: t.ClassVar[str] = "backend"
    #: True when calls never wait on I/O (an in-process store); compositions run such a
    #: layer on the caller's thread.
    local: bool = False
    #: Driver exception types that :meth:`_translate` turns into ``BackendError``.
    _driver_errors: t.ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, *, default_ttl: float | None = None, timer: Timer | None = None) -> None:
        self.default_ttl = validate_ttl(default_ttl, name="default_ttl")
        self.timer: Timer = timer if timer is not None else time.time
        self._counters = Counters(COUNTERS)
        self._flights = SingleFlight()

    # -- hooks for subclasses ---------------------------------------------------------

    def _get(self, key: str) -> Entry | None:
        """The stored entry, possibly expired (the caller filters), or ``None``."""
        raise NotImplementedError

    def _get_many(self, keys: list[str]) -> dict[str, Entry]:
        """The stored entries of ``keys`` that exist (possibly expired)."""
        found = {}
        for key in keys:
            entry = self._get(key)
            if entry is not None:
                found[key] = entry
        return found

    def _set(self, key: str, entry: Entry) -> None:
        """Store ``entry`` (unexpired) under ``key``, replacing any other."""
        raise NotImplementedError

    def _set_many(self, items: dict[str, Entry]) -> None:
        """Store every item; all unexpired."""
        for key, entry in items.items():
            self._set(key, entry)

    def _add(self, key: str, entry: Entry) -> bool:
        """Store ``entry`` only if ``key`` holds no unexpired entry; atomically."""
        raise NotImplementedError

    def _delete(self, key: str) -> bool:
        """Remove ``key``; True if it held an entry (expired or not)."""
        raise NotImplementedError

    def _delete_many(self, keys: list[str]) -> int:
        """Remove ``keys``; how many held an entry."""
        return sum(1 for key in keys if self._delete(key))

    def _delete_each(self, keys: list[str]) -> list[str]:
        """Remove ``keys``; the ones that held an entry (batch stores override this)."""
        return [key for key in keys if self._delete(key)]

    def _incr(self, key: str, delta: int) -> int:
        """Add ``delta`` to the integer under ``key`` atomically, keeping its expiry.

        Raises ``KeyError`` when the key is missing or expired and ``TypeError`` when the
        value is not an integer.
        """
        raise NotImplementedError

    def _touch(self, key: str, expires_at: float | None) -> bool:
        """Give an unexpired entry a new expiry; False if there is none."""
        raise NotImplementedError

    def _clear(self) -> None:
        """Remove every entry this backend owns (and nothing else)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release connections and threads; later calls may reconnect."""

    @property
    def call_timeout(self) -> float | None:
        """The longest one call waits for the store to answer (``None``: no bound known)."""
        return None

    def _iter_keys(self, pattern: str) -> t.Iterator[str]:
        """The keys of this backend's unexpired entries that match ``pattern``."""
        raise UnsupportedOperationError(
            f"the {self.name} backend cannot list its keys; tag the entries and "
            "invalidate the tags instead"
        )

    def _invalidate_pattern(self, pattern: str) -> int:
        """Delete the keys matching ``pattern``; how many were deleted."""
        deleted = 0
        batch: list[str] = []
        for key in self._iter_keys(pattern):
            batch.append(key)
            if len(batch) >= _PATTERN_BATCH:
                deleted += self._delete_many(batch)
                batch = []
        if batch:
            deleted += self._delete_many(batch)
        return deleted

    def _translate(self, exc: BaseException) -> BackendError:
        """Map a driver exception to the most specific ``BackendError``."""
        return BackendError(f"{type(exc).__name__}: {exc}", backend=self.name)

    def _stats_extra(self) -> dict[str, t.Any]:
        """Backend-specific figures added to :meth:`stats`."""
        return {}

    # -- shared helpers ---------------------------------------------------------------

    def _call(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        """Run a hook, translating driver errors at this one boundary."""
        try:
            return fn(*args)
        except TieredCacheError:
            raise
        except self._driver_errors as exc:
            raise self._translate(exc) from exc

    def _decode(self, codec: EntryCodec, key: str, data: bytes) -> Entry | None:
        """Decode an envelope; a payload that fails to verify or decode is a logged miss."""
        try:
            return codec.decode(data)
        except DeserializationError as exc:
            self._corrupt(key, exc)
            return None

    def _corrupt(self, key: str, exc: DeserializationError) -> None:
        """Count and log a payload that failed to verify or decode (the read is a miss)."""
        self._counters.slot()[CORRUPT] += 1
        logger.warning("%s: discarding an undecodable payload for %r: %s", self.name, key, exc)

    def _count_lookups(self, hits: int, misses: int) -> None:
        slot = self._counters.slot()
        slot[HITS] += hits
        slot[MISSES] += misses

    def _now(self) -> float:
        return self.timer()

    # -- entry-level API (what compositions call) ------------------------------------

    def get_entry(self, key: str) -> Entry | None:
        """The unexpired entry under ``key``, or ``None``.

        :raises InvalidKeyError: ``key`` is not a string.
        :raises BackendError: the store failed.
        """
        check_key(key)
        try:
            entry = self._call(self._get, key)
        except BaseException:
            self._counters.slot()[ERRORS] += 1
            raise
        if entry is None or (entry.expires_at is not None and entry.expires_at <= self._now()):
            self._counters.slot()[MISSES] += 1
            return None
        self._counters.slot()[HITS] += 1
        return entry

    def hit_reader(
        self,
        count: t.Callable[[], object],
        otherwise: t.Callable[[str, t.Any], t.Any],
        missed: t.Callable[[str, t.Any], t.Any] | None = None,
    ) -> t.Callable[..., t.Any] | None:
        """A ``get(key, default=None)`` that a composition in front of this backend (as its
        L1) uses for its reads, or ``None`` (this default: the composition reads through
        :meth:`get_entry`).

        The reader returns the value of an unexpired entry without tags, counted as a hit
        here and by calling ``count`` (an incrementer of the composition's
        :class:`~tieredcache.stats.Counters` that only the reader calls: this backend may
        share it, see :meth:`~tieredcache.stats.Counters.share`). For a valid key this
        backend does not hold it counts a miss and returns ``missed(key, default)``
        (``otherwise`` when ``None``); for anything else it returns ``otherwise(key,
        default)``, which reads the ordinary way.
        """
        return None

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        """The unexpired entries of ``keys``, by key; missing keys are absent."""
        wanted = unique_keys(keys)
        if not wanted:
            return {}
        try:
            found = self._call(self._get_many, wanted)
        except BaseException:
            self._counters.slot()[ERRORS] += len(wanted)
            raise
        now = self._now()
        fresh = {
            k: e
            for k, e in found.items()
            if e is not None and (e.expires_at is None or e.expires_at > now)
        }
        self._count_lookups(len(fresh), len(wanted) - len(fresh))
        return fresh

    def admit(self, items: t.Mapping[str, Entry]) -> None:
        """Raise what storing ``items`` would raise for the input alone (a key this store
        cannot hold, a value larger than it takes), without storing anything. A composition
        asks its L2 before it writes any layer, so that such a write leaves every layer as
        it was. This default admits everything.

        :raises InvalidKeyError: a key this store cannot hold.
        :raises ValueTooLargeError: a value larger than this store takes.
        """

    def set_entry(self, key: str, entry: Entry) -> None:
        """Store ``entry`` under ``key``; an already expired entry deletes the key instead.

        ``key`` is trusted: the friendly API and the compositions check keys once, before
        anything is stamped or encoded.
        """
        if entry.expires_at is not None and entry.expires_at <= self._now():
            self.delete(key)
            return
        self._call(self._set, key, entry)
        self._counters.slot()[SETS] += 1

    def set_entries(self, items: t.Mapping[str, Entry]) -> None:
        """Store every item; expired ones delete their key instead. Keys are trusted (see
        :meth:`set_entry`); one item is written as a single-key command."""
        if len(items) == 1:
            for key, entry in items.items():
                self.set_entry(key, entry)
            return
        now = self._now()
        live = {k: e for k, e in items.items() if e.expires_at is None or e.expires_at > now}
        dead = [k for k in items if k not in live]
        if live:
            self._call(self._set_many, live)
            self._counters.slot()[SETS] += len(live)
        if dead:
            self.delete_many(dead)

    def add_entry(self, key: str, entry: Entry) -> bool:
        """Store ``entry`` only if ``key`` holds no unexpired entry (atomic); True if stored."""
        check_key(key)
        if entry.expires_at is not None and entry.expires_at <= self._now():
            return False
        added = self._call(self._add, key, entry)
        if added:
            self._counters.slot()[SETS] += 1
        return added

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it held an entry."""
        check_key(key)
        deleted = self._call(self._delete, key)
        self._counters.slot()[DELETES] += 1
        return deleted

    def delete_many(self, keys: t.Iterable[str]) -> int:
        """Remove ``keys``; how many held an entry."""
        wanted = unique_keys(keys)
        if not wanted:
            return 0
        deleted = self._call(self._delete_many, wanted)
        self._counters.slot()[DELETES] += len(wanted)
        return deleted

    def delete_each(self, keys: t.Iterable[str]) -> list[str]:
        """Remove ``keys``; the ones that held an entry, in the order given."""
        wanted = unique_keys(keys)
        if not wanted:
            return []
        deleted = self._call(self._delete_each, wanted)
        self._counters.slot()[DELETES] += len(wanted)
        return deleted

    def touch_entry(self, key: str, expires_at: float | None) -> bool:
        """Give the unexpired entry under ``key`` a new absolute expiry; False if none."""
        check_key(key)
        if expires_at is not None and expires_at <= self._now():
            return self.delete(key)
        return self._call(self._touch, key, expires_at)

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer under ``key`` atomically and return the new value.

        The entry keeps its expiry.

        :raises KeyError: the key is missing or expired.
        :raises TypeError: ``delta`` or the stored value is not an integer.
        """
        check_key(key)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        value = self._call(self._incr, key, delta)
        self._counters.slot()[SETS] += 1
        return value

    def decr(self, key: str, delta: int = 1) -> int:
        """Subtract ``delta`` from the integer under ``key``; see :meth:`incr`."""
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        return self.incr(key, -delta)

    def clear(self) -> None:
        """Remove every entry this backend owns."""
        self._call(self._clear)

    def iter_keys(self, pattern: str = "*") -> t.Iterator[str]:
        """The keys of this backend's unexpired entries that match the glob ``pattern``.

        Patterns follow Redis's syntax (:mod:`tieredcache.keyglob`) and match the cache's
        own keys, never keys outside this backend (another prefix, another table). Keys
        are produced while the store is scanned: one written or deleted meanwhile may be
        listed or not, and none is listed twice by a memory or SQLite store (Redis's
        ``SCAN`` may repeat a key).

        :raises InvalidKeyError: ``pattern`` is not a str.
        :raises UnsupportedOperationError: the store cannot list its keys (memcached).
        :raises BackendError: the store failed (while iterating).
        """
        compile_glob(pattern)
        return self._translated(self._call(self._iter_keys, pattern))

    def _translated(self, keys: t.Iterator[str]) -> t.Iterator[str]:
        while True:
            try:
                key = self._call(next, keys)
            except StopIteration:
                return
            yield key

    def invalidate_pattern(self, pattern: str) -> int:
        """Delete every key matching the glob ``pattern`` (see :meth:`iter_keys`).

        Only keys within this backend (its prefix, its table) are matched; in Redis every
        matching key goes, whatever type its value has.

        :returns: how many keys were deleted.
        :raises UnsupportedOperationError: the store cannot list its keys (memcached).
        """
        compile_glob(pattern)
        deleted = self._call(self._invalidate_pattern, pattern)
        self._counters.slot()[DELETES] += deleted
        return deleted

    def close(self) -> None:
        """Release connections and threads. Stored data is kept."""
        self._call(self._close)

    # -- reporting and lifetime ------------------------------------------------------

    def reset_stats(self) -> None:
        """Set this backend's counters to zero."""
        self._counters.reset()

    def stats(self) -> dict[str, t.Any]:
        """Counters (see :data:`COUNTERS`) plus backend-specific figures."""
        figures: dict[str, t.Any] = {"backend": self.name, **self._counters.snapshot()}
        figures.update(self._stats_extra())
        return figures

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
