"""
In-process memory
=================

:class:`MemoryBackend` keeps entries in the process, bounded by entry count and optionally
by bytes, evicting by LRU, LFU or FIFO. LRU and FIFO keep their order in one
:class:`collections.OrderedDict` (C code: an insert or a move costs a tenth of a
``cachetools`` container's Python-level bookkeeping, and an L1 refill is one of them); LFU
uses ``cachetools.LFUCache``.

Reads take no lock. Every entry lives in a plain dict that only writers change, under the
lock; a hit reads that dict, checks the expiry and records the key in a small read buffer.
The buffer is replayed into the eviction order under the lock by the next writer (or by a
reader that finds the buffer full and the lock free), so recency and frequency are kept
without making readers queue behind each other.
"""

from __future__ import annotations

import collections
import pickle
import sys
import threading
import typing as t
import weakref

from tieredcache import lifecycle
from tieredcache.backends.base import CORRUPT
from tieredcache.backends.base import SETS
from tieredcache.backends.base import Backend
from tieredcache.backends.base import logger
from tieredcache.backends.memory_order import POLICIES
from tieredcache.backends.memory_order import LinkedOrder
from tieredcache.backends.memory_order import new_order
from tieredcache.backends.sizing import deep_sizeof
from tieredcache.backends.sizing import entry_bytes
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.errors import SerializationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.keyglob import compile_glob
from tieredcache.keys import check_key
from tieredcache.keys import unique_keys
from tieredcache.serializers import PickleSerializer
from tieredcache.serializers import Serializer

__all__ = ["MemoryBackend"]

_READ_BUFFER = 256
_CORRUPT_VALUE = object()  # what _thaw_value returns for a payload that does not decode
# The order keeps an entry's size as an int, which CPython shares when it is at most 256.
_SIZE_INT_BYTES = deep_sizeof(2**20)
_SHARED_INT_MAX = 256


class MemoryBackend(Backend):
    """An in-process store bounded by entry count and optionally by bytes.

    Thread-safe: every mutation holds one lock; reads take none.

    :param maxsize: the most entries held.
    :param max_bytes: the most bytes held: the key and value objects (``sys.getsizeof``)
        plus a fixed per-entry overhead for the bookkeeping, calibrated with tracemalloc so
        that the process really holds about ``max_bytes`` (within 10%); ``None`` = no byte
        bound. Sizes are exact for a serializer's payloads and for ``bytes``/``str``
        values, and the pickled size otherwise.
    :param policy: ``"lru"`` (default), ``"lfu"`` or ``"fifo"``.
    :param serializer: store values serialized (each read returns a fresh copy); ``None``
        stores the objects themselves, so readers share them.
    :param default_ttl: the TTL used when a call passes none.
    :param timer: the clock.
    """

    name = "memory"
    local = True

    def __init__(
        self,
        maxsize: int = 1024,
        *,
        max_bytes: int | None = None,
        policy: str = "lru",
        serializer: Serializer | None = None,
        default_ttl: float | None = None,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(default_ttl=default_ttl, timer=timer)
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError(f"maxsize must be a positive int, not {maxsize!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ConfigurationError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
        if policy not in POLICIES:
            raise ConfigurationError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.policy = policy
        self.serializer = serializer
        self._lock = threading.Lock()
        self._data: dict[str, Entry] = {}
        self._order: t.Any
        bound = maxsize if max_bytes is None else max_bytes
        # LFU's frequency lists keep the key object of the last read, which is another copy
        # of the key whenever the reader built its own string: count the key twice.
        self._key_bytes = 2 if policy == "lfu" else 1
        self._order = new_order(policy, bound, sized=max_bytes is not None)
        # FIFO order does not change on reads, so reads need not be recorded.
        self._reads: collections.deque[str] | None = (
            None if policy == "fifo" else collections.deque(maxlen=_READ_BUFFER)
        )
        self._replaying = False  # a reader is replaying the read buffer (a hint, see below)
        # One atomic count per lookup (see Counters.incrementer).
        self._hit = self._counters.incrementer("hits")
        self._miss = self._counters.incrementer("misses")
        self._count_set = self._counters.incrementer("sets")
        _live.add(self)

    # -- reads: no lock ---------------------------------------------------------------

    def held_version(self, key: str) -> int | None:
        """The version of the unexpired entry held for ``key`` (``None``: none), without
        counting a read or refreshing its place in the eviction order (for housekeeping,
        such as applying coherence messages)."""
        entry = self._data.get(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= self.timer()):
            return None
        return entry.version

    def get_entry(self, key: str) -> Entry | None:
        # The hit path is the point of an L1: one dict read, one clock read, one append to
        # the read buffer and one atomic count. Everything else is off this path.
        try:
            entry = self._data.get(key)
        except TypeError:
            entry = None
        if entry is None:
            check_key(key)
            self._miss()
            return None
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= self.timer():
            self._expire(key, entry)
            self._miss()
            return None
        reads = self._reads
        if reads is not None:
            reads.append(key)
            if len(reads) >= _READ_BUFFER and not self._replaying:
                self._replay_if_free()
        if self.serializer is not None:
            thawed = self._thaw(key, entry)
            if thawed is None:
                self._miss()
                return None
            entry = thawed
        self._hit()
        return entry

    def get(self, key: str, default: t.Any = None) -> t.Any:
        # get_entry() inlined: a standalone L1 answers in one call.
        try:
            entry = self._data.get(key)
        except TypeError:
            entry = None
        if entry is None:
            check_key(key)
            self._miss()
            return default
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= self.timer():
            self._expire(key, entry)
            self._miss()
            return default
        reads = self._reads
        if reads is not None:
            reads.append(key)
            if len(reads) >= _READ_BUFFER and not self._replaying:
                self._replay_if_free()
        if self.serializer is not None:
            value = self._thaw_value(key, entry)
            if value is _CORRUPT_VALUE:
                self._miss()
                return default
            self._hit()
            return value
        self._hit()
        return entry.value

    def hit_reader(
        self,
        count: t.Callable[[], object],
        otherwise: t.Callable[[str, t.Any], t.Any],
        missed: t.Callable[[str, t.Any], t.Any] | None = None,
    ) -> t.Callable[..., t.Any] | None:
        """A ``get(key, default=None)`` for a composition in front of this L1 (see
        :meth:`Backend.hit_reader <tieredcache.backends.base.Backend.hit_reader>`): one
        call for an L1 hit, with every lookup it needs bound in advance.

        ``None`` when this backend's reads cannot be taken that way: it stores serialized
        values, or a subclass reads entries its own way.
        """
        if (
            self.serializer is not None
            or type(self).get_entry is not MemoryBackend.get_entry
            or "get_entry" in vars(self)  # patched on the instance
        ):
            return None
        data_get = self._data.get
        reads = self._reads
        miss = self._miss
        # One atomic call counts the hit here and in the composition.
        hit: t.Callable[[], object] = count
        shared = self._counters.share(count, "hits")
        if not shared:
            own_hit = self._hit

            def hit() -> None:
                own_hit()
                count()

        replay = self._replay_if_free
        backend = self
        after_miss = otherwise if missed is None else missed

        def get(key: str, default: t.Any = None) -> t.Any:
            try:
                entry = data_get(key)
            except TypeError:
                return otherwise(key, default)
            if entry is None:
                check_key(key)
                miss()
                return after_miss(key, default)
            expires_at = entry.expires_at
            try:
                if entry.tags or (expires_at is not None and expires_at <= backend.timer()):
                    return otherwise(key, default)
            except Exception:  # a clock that fails: the ordinary path reports it
                return otherwise(key, default)
            if reads is not None:
                reads.append(key)
                # Every read while the buffer is full tries to replay it (other paths fill
                # it too): a read is never dropped from a full buffer for want of a try.
                if len(reads) >= _READ_BUFFER and not backend._replaying:
                    replay()
            hit()
            return entry.value

        if shared:  # the composition's count is folded into this backend's once it is gone
            weakref.finalize(get, self._counters.unshare, count)
        return get

    def _replay_if_free(self) -> None:
        """A reader found the read buffer full: replay it, unless the lock is taken (its
        holder replays it anyway; readers never wait).

        ``_replaying`` tells the other readers, for the price of an attribute read, that a
        replay is under way: a thread that loses the GIL while it replays holds the lock
        until its next turn, and every read meanwhile would otherwise try the lock.
        """
        if self._lock.acquire(blocking=False):
            self._replaying = True
            try:
                self._replay_reads_locked()
            finally:
                self._replaying = False
                self._lock.release()

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        # get_entry() for each key, with the lookups and the counting done once.
        found: dict[str, Entry] = {}
        data_get = self._data.get
        now = self.timer()
        misses = 0
        for key in unique_keys(keys):
            entry = data_get(key)
            if entry is None:
                misses += 1
                continue
            expires_at = entry.expires_at
            if expires_at is not None and expires_at <= now:
                self._expire(key, entry)
                misses += 1
                continue
            if self.serializer is not None:
                thawed = self._thaw(key, entry)
                if thawed is None:
                    misses += 1
                    continue
                entry = thawed
            found[key] = entry
        reads = self._reads
        if found and reads is not None:
            reads.extend(found)
            if len(reads) >= _READ_BUFFER and not self._replaying:
                self._replay_if_free()
        if found or misses:
            self._count_lookups(len(found), misses)
        return found

    def set_entries(self, items: t.Mapping[str, Entry]) -> None:
        # Backend.set_entries without the driver-error boundary (see set_entry).
        if len(items) == 1:  # a composition's set of one key
            for key, entry in items.items():
                self.set_entry(key, entry)
            return
        now = self.timer()
        live = {k: e for k, e in items.items() if e.expires_at is None or e.expires_at > now}
        if live:
            self._set_many(live)
            self._counters.slot()[SETS] += len(live)
        if len(live) < len(items):
            self.delete_many([k for k in items if k not in live])

    def _thaw(self, key: str, stored: Entry) -> Entry | None:
        value = self._thaw_value(key, stored)
        if value is _CORRUPT_VALUE:
            return None
        return Entry(value, stored.expires_at, stored.version, stored.stale_at, stored.tags)

    def _thaw_value(self, key: str, stored: Entry) -> t.Any:
        """The stored payload deserialized, or ``_CORRUPT_VALUE`` (logged and counted)."""
        serializer = self.serializer
        assert serializer is not None
        try:
            if type(serializer) is PickleSerializer:  # the Django L1: skip one call
                try:
                    return pickle.loads(stored.value)
                except Exception as exc:
                    raise DeserializationError(f"cannot unpickle payload: {exc!r}") from exc
            try:
                return serializer.loads(stored.value)
            except DeserializationError:
                raise
            except Exception as exc:  # a serializer of the caller's own that raised anything
                raise DeserializationError(f"cannot decode payload: {exc!r}") from exc
        except DeserializationError as exc:
            self._counters.slot()[CORRUPT] += 1
            logger.warning("memory: discarding an undecodable value for %r: %s", key, exc)
            return _CORRUPT_VALUE

    def _get(self, key: str) -> Entry | None:
        entry = self._data.get(key)
        if entry is not None and self.serializer is not None:
            return self._thaw(key, entry)
        return entry

    def _expire(self, key: str, entry: Entry) -> None:
        with self._lock:
            if self._data.get(key) is entry:
                self._remove_locked(key)

    # -- writes: under the lock -------------------------------------------------------

    def _replay_reads_locked(self) -> None:
        reads = self._reads
        if reads:
            self._order.replay(reads)

    def _freeze(self, entry: Entry) -> tuple[Entry, int]:
        """The entry as stored, and its size in bytes (0 when there is no byte bound)."""
        if self.serializer is not None:
            try:
                payload = self.serializer.dumps(entry.value)
            except SerializationError:
                raise
            except Exception as exc:  # a serializer of the caller's own that raised anything
                raise SerializationError(
                    f"cannot serialize {type(entry.value).__name__}: {exc!r}"
                ) from exc
            stored = Entry(payload, entry.expires_at, entry.version, entry.stale_at, entry.tags)
            return stored, (entry_bytes(stored, sys.getsizeof(payload)) if self.max_bytes else 0)
        if entry.wire is not None:
            entry = _unwired(entry)
        if self.max_bytes is None:
            return entry, 0
        return entry, entry_bytes(entry, deep_sizeof(entry.value))

    def _store_locked(self, key: str, stored: Entry, size: int) -> None:
        order = self._order
        reads = self._reads
        if reads:
            order.replay(reads)
        if key in self._data:  # the read map and the order hold the same keys
            del order[key]
        if self.max_bytes is None:
            order[key] = 1
        else:
            # The bound covers the entries and the tables that hold them (the read map's
            # and the order's, which grow in steps and do not shrink when entries go).
            size += self._key_bytes * sys.getsizeof(key) + _SIZE_INT_BYTES
            if size <= _SHARED_INT_MAX:
                size -= _SIZE_INT_BYTES
            room = self.max_bytes - self._structure_bytes_locked()
            while order.currsize + size > room and len(order):
                order.popitem()
            order[key] = size
            while len(order) > self.maxsize:
                order.popitem()
            self._data[key] = stored
            room = self.max_bytes - self._structure_bytes_locked()
            while order.currsize > room and len(order) > 1:  # a table grew: make room
                order.popitem()
        self._data[key] = stored
        if order.evicted:
            for gone in order.evicted:
                self._data.pop(gone, None)
            order.evicted.clear()

    def _structure_bytes_locked(self) -> int:
        """The bytes of the read map, the read buffer and the eviction order themselves."""
        reads = sys.getsizeof(self._reads) if self._reads is not None else 0
        return sys.getsizeof(self._data) + reads + int(self._order.structure_bytes())

    def _check_size(self, key: str, size: int) -> None:
        if self.max_bytes is not None and size + sys.getsizeof(key) > self.max_bytes:
            raise ValueTooLargeError(
                f"a value of {size} bytes does not fit in max_bytes={self.max_bytes}",
                backend=self.name,
            )

    def _remove_locked(self, key: str) -> bool:
        if self._data.pop(key, None) is None:
            return False
        if key in self._order:
            del self._order[key]
        return True

    def set_entry(self, key: str, entry: Entry) -> None:
        # Backend.set_entry without the driver-error boundary (an in-process store has no
        # driver): this is the refill of every L2 hit. Keys are trusted (see Backend.set_entry).
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= self.timer():
            self.delete(key)
            return
        self._set(key, entry)
        self._count_set()

    def _set(self, key: str, entry: Entry) -> None:
        stored, size = self._freeze(entry)  # outside the lock: serializing can be slow
        self._check_size(key, size)
        with self._lock:
            self._store_locked(key, stored, size)

    def _set_many(self, items: dict[str, Entry]) -> None:
        order = self._order
        if self.serializer is None and self.max_bytes is None and type(order) is LinkedOrder:
            # Entries as they are, each accounted as 1: the order takes the keys in one call
            # (what _store_locked does per key, evicting once all are in).
            plain = {
                key: entry if entry.wire is None else _unwired(entry)
                for key, entry in items.items()
            }
            data = self._data
            with self._lock:
                reads = self._reads
                if reads:
                    order.replay(reads)
                order.add_units(plain)
                data.update(plain)
                if order.evicted:
                    for gone in order.evicted:
                        data.pop(gone, None)
                    order.evicted.clear()
            return
        frozen = {key: self._freeze(entry) for key, entry in items.items()}
        for key, (_, size) in frozen.items():
            self._check_size(key, size)
        with self._lock:
            for key, (stored, size) in frozen.items():
                self._store_locked(key, stored, size)

    def _add(self, key: str, entry: Entry) -> bool:
        stored, size = self._freeze(entry)
        self._check_size(key, size)
        with self._lock:
            current = self._data.get(key)
            if current is not None and not current.expired(self.timer()):
                return False
            self._store_locked(key, stored, size)
            return True

    def _delete(self, key: str) -> bool:
        with self._lock:
            return self._remove_locked(key)

    def _delete_many(self, keys: list[str]) -> int:
        with self._lock:
            return sum(1 for key in keys if self._remove_locked(key))

    def _incr(self, key: str, delta: int) -> int:
        with self._lock:
            current = self._data.get(key)
            if current is None or current.expired(self.timer()):
                raise KeyError(key)
            value = current.value
            if self.serializer is not None:
                value = self.serializer.loads(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"the value under {key!r} is not an integer")
            result = value + delta
            updated = Entry(result, current.expires_at, next_version(), current.stale_at)
            stored, size = self._freeze(updated)
            self._check_size(key, size)  # before anything changes: the key keeps its value
            self._store_locked(key, stored, size)
            return result

    def _touch(self, key: str, expires_at: float | None) -> bool:
        with self._lock:
            current = self._data.get(key)
            if current is None or current.expired(self.timer()):
                return False
            self._data[key] = current.replace(expires_at=expires_at)
            return True

    def _clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._order.clear()
            if self._reads is not None:
                self._reads.clear()

    def _iter_keys(self, pattern: str) -> t.Iterator[str]:
        match = compile_glob(pattern).match
        now = self.timer()
        with self._lock:
            keys = [k for k, e in self._data.items() if match(k) and not e.expired(now)]
        return iter(keys)

    def _invalidate_pattern(self, pattern: str) -> int:
        match = compile_glob(pattern).match
        now = self.timer()
        with self._lock:
            doomed = [k for k, e in self._data.items() if match(k)]
            live = sum(1 for k in doomed if not self._data[k].expired(now))
            for key in doomed:
                self._remove_locked(key)
        return live

    def purge_expired(self) -> int:
        """Remove every expired entry now; how many were removed."""
        now = self.timer()
        with self._lock:
            dead = [k for k, e in self._data.items() if e.expired(now)]
            for key in dead:
                self._remove_locked(key)
            return len(dead)

    # -- introspection ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._data)

    @property
    def currsize(self) -> int:
        """Entries held, or bytes held when ``max_bytes`` is set."""
        return int(self._order.currsize)

    def _stats_extra(self) -> dict[str, t.Any]:
        with self._lock:
            figures: dict[str, t.Any] = {"entries": len(self._data), "maxsize": self.maxsize}
            if self.max_bytes is not None:
                figures.update(bytes=int(self._order.currsize), max_bytes=self.max_bytes)
        return figures

    def _check_invariants(self) -> None:
        """Assert the internal structures agree and respect the bounds (for tests)."""
        with self._lock:
            assert set(self._data) == set(self._order.keys()), "read map and order disagree"
            assert len(self._data) <= self.maxsize, "more entries than maxsize"
            if self.max_bytes is not None:
                assert self._order.currsize <= self.max_bytes, "more bytes than max_bytes"

    def __repr__(self) -> str:
        bound = f", max_bytes={self.max_bytes}" if self.max_bytes else ""
        return f"<MemoryBackend maxsize={self.maxsize}{bound} policy={self.policy}>"


def _unwired(entry: Entry) -> Entry:
    """``entry`` without the L2 envelope a composition's write keeps on it (L1 does not
    keep that envelope alive)."""
    return Entry(entry.value, entry.expires_at, entry.version, entry.stale_at, entry.tags)


_live: weakref.WeakSet[MemoryBackend] = weakref.WeakSet()


def _reset_locks_after_fork() -> None:
    # A lock held by another thread at the fork would never be released in the child, nor
    # would that thread's replay of the read buffer end there.
    for backend in list(_live):
        backend._lock = threading.Lock()
        backend._replaying = False


lifecycle.on_fork(_reset_locks_after_fork, lifecycle.Stage.STATE)
