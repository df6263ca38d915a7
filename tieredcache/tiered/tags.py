"""
Tags
====

An entry written with ``tags=("user:7", "org:3")`` carries its tags in its envelope, and its
write time is its ``version`` (wall-clock nanoseconds). :meth:`TagIndex.invalidate` records,
for each tag, the version at which it was invalidated, under the reserved key
``__tag__:<tag>`` in L2 (a plain entry, so every L2 keeps it), and a read drops a tagged
entry whose version is not newer than the invalidation of one of its tags.

No read scans the keyspace and an L1 hit makes no L2 round trip: this process keeps each
tag's invalidation version in memory and reads it again from L2 only when its copy is older
than ``tag_ttl`` seconds, or sooner when the backplane reports that the reserved key changed
(the write of the record is announced like any write). An untagged entry costs one attribute
check; a tagged L1 hit costs one dictionary lookup per tag (the trust in the copies is
ended every ``tag_ttl`` seconds by a background thread, or, with a clock other than
:func:`time.time`, by deadlines read on each tagged hit).

Guarantees:

* when :meth:`TagIndex.invalidate` returns, no read in this process returns an entry written
  before it that carries one of the tags (this process's copy is updated first and never
  goes back to an older version);
* other processes stop returning such entries once the backplane delivers the announcement
  or, without one, within ``tag_ttl`` seconds;
* a process started later reads the record from L2 and never returns them.

Versions from different processes compare as wall-clock times, so the bound across
processes is as good as the clocks agree. The record has no expiry; on memcached it can
still be evicted under memory pressure, which lets entries written before it be served
again until they expire.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
import weakref

from tieredcache import lifecycle
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.errors import InvalidKeyError

if t.TYPE_CHECKING:
    from tieredcache.tiered.cache import TieredCache

__all__ = ["TAG_PREFIX", "TagIndex", "check_tags", "tag_key"]

logger = logging.getLogger("tieredcache")

TAG_PREFIX = "__tag__:"
"""The prefix of the reserved keys that hold tag invalidation versions."""

_NEVER = -1  # the version of a tag never invalidated


def tag_key(tag: str) -> str:
    """The reserved key holding ``tag``'s invalidation version."""
    return TAG_PREFIX + tag


def check_tags(tags: t.Any) -> tuple[str, ...]:
    """``tags`` as a tuple of distinct non-empty strings, in the order given.

    :raises InvalidKeyError: ``tags`` is a single string, not iterable, or holds a value
        that is not a non-empty str.
    """
    if isinstance(tags, (str, bytes)):
        raise InvalidKeyError(f"tags must be a collection of str, not the single value {tags!r}")
    try:
        items = list(tags)
    except TypeError:
        raise InvalidKeyError(f"tags must be a collection of str, not {tags!r}") from None
    for tag in items:
        if not isinstance(tag, str) or not tag:
            raise InvalidKeyError(f"a tag must be a non-empty str, not {tag!r}")
    return tuple(dict.fromkeys(items))


class TagIndex:
    """The tag invalidation versions one composition knows. Thread-safe.

    :param cache: the composition whose L2 holds the records.
    :param ttl: how long, in seconds, a version read from L2 is trusted before it is read
        again.
    """

    #: ``valid(entry)``: True unless one of the entry's tags was invalidated at or after
    #: its write.
    valid: t.Callable[[Entry], bool]

    def __init__(self, cache: TieredCache, ttl: float) -> None:
        self.cache = cache
        self.ttl = ttl
        self._timer = cache.timer
        self._lock = threading.Lock()
        # tag -> invalidation version, for the tags whose version is trusted now
        self._versions: dict[str, int] = {}
        # tag -> the newest version ever known (never lowered by a read of an older record)
        self._floor: dict[str, int] = {}
        # With the real clock a ticker thread ends the trust every ``ttl`` seconds, so that
        # a tagged hit reads no clock; with another clock each version carries a deadline.
        self._real_clock = cache.timer is time.time
        self._until: dict[str, float] = {}
        self.valid = self._valid_ticked if self._real_clock else self._valid_timed
        if self._real_clock:
            _ticker.add(self)

    def _valid_ticked(self, entry: Entry) -> bool:
        # On every tagged hit: one dictionary lookup per tag, and no clock.
        versions = self._versions
        version = entry.version
        for tag in entry.tags:
            known = versions.get(tag)
            if known is None:
                return self._valid_after_load(entry)
            if version <= known:
                return False
        return True

    def _valid_timed(self, entry: Entry) -> bool:
        now = self._timer()
        until = self._until
        for tag in entry.tags:
            if until.get(tag, now) <= now:
                self.expire([tag])
        return self._valid_ticked(entry)

    def keep_valid(self, entries: dict[str, Entry]) -> dict[str, Entry]:
        """``entries`` without the tagged ones that were invalidated."""
        for entry in entries.values():
            if entry.tags:
                break
        else:
            return entries
        return {k: e for k, e in entries.items() if not e.tags or self.valid(e)}

    def _valid_after_load(self, entry: Entry) -> bool:
        versions = self._versions
        due = [tag for tag in entry.tags if tag not in versions]
        if due:
            self.load(due)
        for tag in entry.tags:
            known = versions.get(tag, self._floor.get(tag, _NEVER))
            if entry.version <= known:
                return False
        return True

    def load(self, tags: t.Sequence[str]) -> None:
        """Read the invalidation versions of ``tags`` from L2 (one batched read)."""
        try:
            found = self.cache.gate.read([tag_key(tag) for tag in tags])
        except Exception as exc:
            # What L2 holds cannot be learnt now; what this process knows still applies.
            logger.warning("tiered: reading tag versions failed: %r", exc)
            return
        until = self._timer() + self.ttl
        with self._lock:
            for tag in tags:
                version = max(_version_of(found.get(tag_key(tag))), self._floor.get(tag, _NEVER))
                self._floor[tag] = version
                self._until[tag] = until
                self._versions[tag] = version

    def note(self, tags: t.Iterable[str], version: int) -> None:
        """Record locally that ``tags`` were invalidated at ``version``."""
        with self._lock:
            for tag in tags:
                if self._floor.get(tag, _NEVER) < version:
                    self._floor[tag] = version
                known = self._versions.get(tag)
                if known is not None and known < version:
                    self._versions[tag] = version

    def invalidate(self, tags: t.Iterable[str]) -> int:
        """Invalidate every entry carrying one of ``tags``; the invalidation version.

        This process's copy changes first, then the records are written to L2 as ordered
        writes (announced on the backplane once L2 has them).

        :raises InvalidKeyError: ``tags`` is not a collection of non-empty str.
        :raises BackendError: L2 failed (without fail-open); this process already applies
            the invalidation.
        """
        from tieredcache.tiered.cache import TieredCache

        chosen = check_tags(tags)
        if not chosen:
            return 0
        version = next_version()
        layer: t.Any = self.cache
        while isinstance(layer, TieredCache):
            layer.tag_index.note(chosen, version)
            layer = layer.l2
        records = {tag_key(tag): Entry(version, None, version) for tag in chosen}
        self.cache.write_entries(records, self.cache.timer())
        return version

    def expire(self, tags: t.Iterable[str] | None = None) -> None:
        """Stop trusting the versions of ``tags`` (all when ``None``): read them again."""
        with self._lock:
            if tags is None:
                self._versions = {}
            else:
                for tag in tags:
                    self._versions.pop(tag, None)

    def forget(self, keys: t.Iterable[str]) -> None:
        """The records of these keys changed elsewhere: read them from L2 on next use."""
        self.expire([key[len(TAG_PREFIX) :] for key in keys if key.startswith(TAG_PREFIX)])

    def reset(self) -> None:
        """Messages may have been missed: read every tag from L2 on next use."""
        self.expire()


class _Ticker:
    """One thread ending the trust of every real-clock :class:`TagIndex` in time.

    Not a daemon: it waits on an event, stops by itself when no index is left, and is
    stopped by the lifecycle's exit hook before the interpreter joins threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: weakref.WeakSet[TagIndex] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, index: TagIndex) -> None:
        with self._lock:
            self._indexes.add(index)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="tieredcache-tags", daemon=False
                )
                self._thread.start()

    def _run(self) -> None:
        last: dict[int, float] = {}
        while True:
            with self._lock:
                indexes = list(self._indexes)
                if not indexes:
                    self._thread = None
                    return
            step = min([i.ttl for i in indexes] + [1.0])
            del indexes  # held only while they are looked at: the set stays weak
            if self._stop.wait(max(step / 2, 0.01)):
                return
            now = time.monotonic()
            for index in list(self._indexes):
                if now - last.get(id(index), 0.0) >= index.ttl:
                    last[id(index)] = now
                    index.expire()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None  # the parent's thread does not exist in the child
        if len(self._indexes):
            self.add(next(iter(self._indexes)))


_ticker = _Ticker()
lifecycle.on_fork(_ticker.after_fork, lifecycle.Stage.EXECUTORS)
lifecycle.on_exit(_ticker.stop, lifecycle.Stage.SUBSCRIBERS)


def _version_of(record: Entry | None) -> int:
    if record is None:
        return _NEVER
    value = record.value
    if isinstance(value, bool) or not isinstance(value, int):
        logger.warning("tiered: ignoring a tag record that is not a version: %r", value)
        return _NEVER
    return value
