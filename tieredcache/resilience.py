"""How a composition survives a failing L2: the circuit breaker, fail-open and replay.

Every call a :class:`~tieredcache.TieredCache` makes to its L2 goes through a
:class:`TierGuard`. The guard refuses calls while the tier's circuit breaker is open, and
records each call's outcome in it. With ``fail_open=True`` the composition turns L2
failures into misses (reads) and L1-only writes, logged (rate-limited) and counted; the L2
writes and deletes that failed are queued, one per key with the newest winning, and replayed
in the background once L2 answers again, so a delete made during an outage is not lost.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing as t

from tieredcache.entry import Entry
from tieredcache.errors import BackendError
from tieredcache.errors import OffloadError
from tieredcache.executor import marked
from tieredcache.policies.base import tag_tier
from tieredcache.stats import TIERED_INDEX

__all__ = ["FailOpenMixin", "RateLimitedLog", "ReplayItem", "TierGuard"]

_L2 = 1

logger = logging.getLogger("tieredcache")

T = t.TypeVar("T")


class RateLimitedLog:
    """Logs a message at most once per ``interval`` seconds per topic; counts the rest.

    Thread-safe.
    """

    def __init__(self, interval: float = 10.0, clock: t.Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, topic: str, message: str, *args: t.Any) -> None:
        now = self.clock()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._suppressed[topic] += 1
                return
            self._last[topic] = now
            suppressed = self._suppressed.pop(topic, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.warning(message, *args)


class ReplayItem(t.NamedTuple):
    """An L2 write that failed under fail-open and waits to be replayed."""

    op: str  # "set", "delete" or "touch"
    seq: int  # the ordering sequence number of the failed write
    entry: Entry | None  # for "set"
    expires_at: float | None  # for "touch"


class TierGuard:
    """The gate between a composition and its L2. Thread-safe.

    :param breaker: the tier's circuit breaker (``None``: no breaker).
    :param fail_open: absorb L2 failures (see the module docstring).
    :param replay_limit: the most keys waiting for replay; past it the oldest are dropped
        (counted and logged).
    """

    def __init__(self, breaker: t.Any, fail_open: bool, replay_limit: int = 10_000) -> None:
        self.breaker = breaker
        self.fail_open = fail_open
        self.replay_limit = replay_limit
        self.log = RateLimitedLog()
        self._lock = threading.Lock()
        self._queue: collections.OrderedDict[str, ReplayItem] = collections.OrderedDict()
        self.replayed = 0
        self.replay_dropped = 0
        self.replay_superseded = 0

    def call(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        """Call ``fn(*args)`` on the tier through the breaker."""
        breaker = self.breaker
        if breaker is None:
            return fn(*args)
        if not breaker.allow():
            from tieredcache.breaker import CircuitOpenError

            raise CircuitOpenError("the circuit breaker of this tier is open", backend="l2")
        try:
            result = fn(*args)
        except BackendError:
            breaker.record_failure()
            raise
        except BaseException:
            # Not the tier's fault (a bad value, KeyError from incr...): the tier answered.
            breaker.record_success()
            raise
        breaker.record_success()
        return result

    # -- the replay queue -------------------------------------------------------------

    def enqueue(self, key: str, item: ReplayItem) -> None:
        """Remember a failed write of ``key``; a newer one replaces an older one."""
        with self._lock:
            current = self._queue.get(key)
            if current is not None and current.seq > item.seq:
                return
            self._queue[key] = item
            self._queue.move_to_end(key)
            dropped = []
            while len(self._queue) > self.replay_limit:
                dropped.append(self._queue.popitem(last=False)[0])
            self.replay_dropped += len(dropped)
        if dropped:
            self.log.warning(
                "replay-dropped",
                "tiered: replay queue full (%d); dropped the oldest failed writes, e.g. %r",
                self.replay_limit,
                dropped[0],
            )

    def discard(self, keys: t.Iterable[str], seq: int) -> None:
        """Writes of ``keys`` at ``seq`` reached L2: older queued writes are superseded."""
        if not self._queue:
            return
        with self._lock:
            for key in keys:
                item = self._queue.get(key)
                if item is not None and item.seq <= seq:
                    del self._queue[key]
                    self.replay_superseded += 1

    def take(self, key: str, seq: int) -> ReplayItem | None:
        """Remove and return the queued item of ``key`` if it is still the one at ``seq``."""
        with self._lock:
            item = self._queue.get(key)
            if item is None or item.seq != seq:
                return None
            del self._queue[key]
            return item

    def snapshot(self) -> list[tuple[str, ReplayItem]]:
        """The queued items, oldest first."""
        with self._lock:
            return list(self._queue.items())

    def __len__(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, t.Any]:
        figures: dict[str, t.Any] = {
            "fail_open": self.fail_open,
            "replay_pending": len(self._queue),
            "replayed": self.replayed,
            "replay_dropped": self.replay_dropped,
            "replay_superseded": self.replay_superseded,
        }
        if self.breaker is not None:
            figures["breaker"] = self.breaker.stats()
        return figures


class FailOpenMixin:
    """The part of :class:`~tieredcache.TieredCache` that calls L2 through its
    :class:`TierGuard`: fail-open absorption and the replay of failed writes.

    Its methods run on a ``TieredCache`` and use its internals; they are typed ``Any``
    because a mixin cannot name the class it is mixed into.
    """

    def _absorb(
        self: t.Any, kind: str, operation: str, keys: t.Sequence[str], exc: BaseException
    ) -> None:
        """Count and report an L2 failure that fail-open turned into a miss or an L1 write."""
        tag_tier(exc, "l2")
        self._counters.slot()[TIERED_INDEX[f"l2_{kind}_errors"]] += 1
        self._guard.log.warning(
            f"l2-{kind}", "tiered: l2 %s failed; serving from l1 (fail-open): %r", operation, exc
        )
        if kind == "write" and self.on_partial_failure is not None:
            try:
                self.on_partial_failure("l2", list(keys), exc)
            except Exception:
                logger.exception("tiered: on_partial_failure hook raised")

    def _l2_read(self: t.Any, keys: list[str]) -> dict[str, Entry]:
        try:
            found: dict[str, Entry] = self._guard.call(self.l2.get_entries, keys)
        except BackendError as exc:
            if not self._guard.fail_open:
                raise
            self._absorb("read", "read", keys, exc)
            return {}
        if len(self._guard):
            self._schedule_replay()
        return found

    def _l2_read_one(self: t.Any, key: str) -> Entry | None:
        # get_entries() of one key, as the batch path reads: an L2 (a Redis one) answers
        # a single key with one GET.
        try:
            found: dict[str, Entry] = self._guard.call(self.l2.get_entries, (key,))
        except BackendError as exc:
            if not self._guard.fail_open:
                raise
            self._absorb("read", "read", [key], exc)
            return None
        if len(self._guard):
            self._schedule_replay()
        return found.get(key)

    def _l2_set(self: t.Any, chosen: list[str], items: t.Mapping[str, Entry], seq: int) -> None:
        try:
            self._guard.call(self.l2.set_entries, {k: items[k] for k in chosen})
        except BackendError as exc:
            if not self._guard.fail_open:
                raise
            self._absorb("write", "set", chosen, exc)
            for key in chosen:
                self._guard.enqueue(key, ReplayItem("set", seq, items[key], None))
            return
        self._l2_landed(chosen, seq)

    def _l2_delete(self: t.Any, keys: list[str], seq: int) -> list[str]:
        try:
            deleted: list[str] = self._guard.call(self.l2.delete_each, keys)
        except BackendError as exc:
            if not self._guard.fail_open:
                raise
            self._absorb("write", "delete", keys, exc)
            for key in keys:
                self._guard.enqueue(key, ReplayItem("delete", seq, None, None))
            return []
        self._l2_landed(keys, seq)
        return deleted

    def _l2_touch(self: t.Any, key: str, expires_at: float | None, seq: int) -> bool:
        try:
            touched: bool = self._guard.call(self.l2.touch_entry, key, expires_at)
            return touched
        except BackendError as exc:
            if not self._guard.fail_open:
                raise
            self._absorb("write", "touch", [key], exc)
            self._guard.enqueue(key, ReplayItem("touch", seq, None, expires_at))
            return False

    def _l2_landed(self: t.Any, keys: list[str], seq: int) -> None:
        if len(self._guard):
            self._guard.discard(keys, seq)
            self._schedule_replay()

    def _schedule_replay(self: t.Any) -> None:
        if not len(self._guard):
            return
        try:
            self.offload.register(self._replay_key, marked(self.replay))
        except OffloadError:
            logger.warning("tiered: cannot schedule the replay of failed l2 writes: offload closed")

    def replay(self: t.Any) -> int:
        """Replay the L2 writes and deletes that failed under fail-open; how many landed.

        Runs by itself in the background once L2 answers again; call it to replay now.
        Stops at the first failure (the rest stay queued).
        """
        landed = 0
        for key, item in self._guard.snapshot():
            keys = [key]
            states = self._ordering.begin_write(keys, item.seq, legs=1)
            try:
                if self._guard.take(key, item.seq) is None:
                    continue  # superseded meanwhile by a newer write of the key

                def op(_: list[str], item: ReplayItem = item, key: str = key) -> object:
                    if item.op == "set":
                        assert item.entry is not None
                        return self._guard.call(self.l2.set_entry, key, item.entry)
                    if item.op == "delete":
                        return self._guard.call(self.l2.delete, key)
                    return self._guard.call(self.l2.touch_entry, key, item.expires_at)

                try:
                    self._guarded(_L2, keys, states, item.seq, op, mark=item.op != "touch")
                except BackendError:
                    self._guard.enqueue(key, item)
                    return landed
                landed += 1
                with self._guard._lock:
                    self._guard.replayed += 1
            finally:
                self._ordering.end_leg(keys, states)
        return landed
