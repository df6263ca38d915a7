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
check; a tagged L1 hit costs a clock read and one dictionary lookup per tag.

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
import typing as t

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

    def __init__(self, cache: TieredCache, ttl: float) -> None:
        self.cache = cache
        self.ttl = ttl
        self._lock = threading.Lock()
        # tag -> (invalidation version, time after which L2 is asked again)
        self._versions: dict[str, tuple[int, float]] = {}

    def valid(self, entry: Entry) -> bool:
        """True unless one of the entry's tags was invalidated at or after its write."""
        versions = self._versions
        now = self.cache.timer()
        for tag in entry.tags:
            known = versions.get(tag)
            if known is None or known[1] <= now:
                return self._valid_after_load(entry, now)
            if entry.version <= known[0]:
                return False
        return True

    def keep_valid(self, entries: dict[str, Entry]) -> dict[str, Entry]:
        """``entries`` without the tagged ones that were invalidated."""
        for entry in entries.values():
            if entry.tags:
                break
        else:
            return entries
        return {k: e for k, e in entries.items() if not e.tags or self.valid(e)}

    def _valid_after_load(self, entry: Entry, now: float) -> bool:
        versions = self._versions
        due = [tag for tag in entry.tags if versions.get(tag, (0, now))[1] <= now]
        if due:
            self.load(due, now)
        return all(entry.version > versions[tag][0] for tag in entry.tags)

    def load(self, tags: t.Sequence[str], now: float) -> None:
        """Read the invalidation versions of ``tags`` from L2 (one batched read)."""
        found: dict[str, Entry] = {}
        try:
            found = self.cache.gate.read([tag_key(tag) for tag in tags])
        except Exception as exc:
            # What L2 holds cannot be learnt now; what this process knows still applies.
            logger.warning("tiered: reading tag versions failed: %r", exc)
        until = now + self.ttl
        with self._lock:
            for tag in tags:
                record = found.get(tag_key(tag))
                version = _version_of(record)
                known = self._versions.get(tag)
                if known is not None and known[0] > version:
                    version = known[0]
                self._versions[tag] = (version, until)

    def note(self, tags: t.Iterable[str], version: int) -> None:
        """Record locally that ``tags`` were invalidated at ``version``."""
        until = self.cache.timer() + self.ttl
        with self._lock:
            for tag in tags:
                known = self._versions.get(tag)
                if known is None or known[0] < version:
                    self._versions[tag] = (version, until)

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

    def forget(self, keys: t.Iterable[str]) -> None:
        """The records of these keys changed elsewhere: read them from L2 on next use."""
        with self._lock:
            for key in keys:
                if key.startswith(TAG_PREFIX):
                    known = self._versions.get(key[len(TAG_PREFIX) :])
                    if known is not None:
                        self._versions[key[len(TAG_PREFIX) :]] = (known[0], float("-inf"))

    def reset(self) -> None:
        """Messages may have been missed: read every tag from L2 on next use."""
        with self._lock:
            self._versions = {
                tag: (version, float("-inf")) for tag, (version, _) in self._versions.items()
            }


def _version_of(record: Entry | None) -> int:
    if record is None:
        return _NEVER
    value = record.value
    if isinstance(value, bool) or not isinstance(value, int):
        logger.warning("tiered: ignoring a tag record that is not a version: %r", value)
        return _NEVER
    return value
