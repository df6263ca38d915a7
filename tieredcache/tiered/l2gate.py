"""
The L2 gate
===========

Every call a :class:`~tieredcache.TieredCache` makes to its L2 goes through its
:class:`L2Gate`, which owns what happens around that call under faults:

- the **circuit breaker**: only *availability* failures (timeouts, refused or broken
  connections: :class:`~tieredcache.errors.BackendUnavailableError`) move it; an answer the
  server gave about one key (a wrong type, a rejected value) is that key's error, or on a read
  a miss, and leaves the breaker alone;
- **one timeout per operation**: once L2 failed for availability within an operation
  (``get_or_set`` reads, loads and writes), the rest of that operation does not call it again;
  a leg that waits for an earlier write of the same key waits at most the tier's call timeout;
- **fail-open**: L2 availability failures become misses (reads) and L1-only writes, logged
  (rate-limited) and counted; the writes, deletes and touches that failed are queued, one per
  key with the newest winning;
- **replay**: a read of a key with a queued write answers from the queue, never from L2's older
  value; the queue is replayed in the background as soon as L2 answers again (a worker retries
  with backoff, so a process that only hits L1 replays too), and a replayed delete also evicts
  L1;
- **announcements**: a key is announced on the backplane once its L2 write has landed (race
  losers and replays included), or, when the write failed without fail-open, for eviction
  once L2 answers again (the reply may have been lost after it landed). The gate's worker
  sends them in batches (:mod:`.announce`); a publish never holds a write.

The worker (:mod:`.worker`) is stopped by :meth:`L2Gate.close` and at interpreter exit
after one last bounded flush, and forgotten in a forked child, which drops the parent's
queues (the parent replays and announces them).
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

from tieredcache import lifecycle
from tieredcache.breaker import CircuitBreaker
from tieredcache.breaker import CircuitOpenError
from tieredcache.entry import Entry
from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendUnavailableError
from tieredcache.events import REPLAY_DONE
from tieredcache.policies.base import tag_tier
from tieredcache.ratelog import RateLimitedLog
from tieredcache.stats import TIERED_INDEX
from tieredcache.stats import Counters
from tieredcache.tiered.announce import Announcements
from tieredcache.tiered.ordering import L2
from tieredcache.tiered.ordering import KeyBusyError
from tieredcache.tiered.ordering import Leg
from tieredcache.tiered.ordering import Ordering
from tieredcache.tiered.ordering import WriteSlot
from tieredcache.tiered.replay import ReplayFactory
from tieredcache.tiered.replay import ReplayItem
from tieredcache.tiered.replay import ReplayQueue
from tieredcache.tiered.replay import delete_replay
from tieredcache.tiered.replay import run_replays
from tieredcache.tiered.replay import set_replay
from tieredcache.tiered.replay import touch_replay
from tieredcache.tiered.scope import OperationScope
from tieredcache.tiered.worker import RetryWorker

if t.TYPE_CHECKING:
    from tieredcache.backends.base import Backend
    from tieredcache.backplane import Backplane
    from tieredcache.events import Events

__all__ = ["CallWrapper", "L2Gate", "PartialFailureHook", "call_timeout"]

logger = logging.getLogger("tieredcache")

T = t.TypeVar("T")

PartialFailureHook = t.Callable[[str, t.Sequence[str], BaseException], None]

CallWrapper = t.Callable[[str, t.Callable[[], t.Any]], t.Any]
"""``wrapper(name, call)``: runs ``call()`` and returns its result."""

#: Seconds the gate's worker waits for more work before its thread ends.
WORKER_KEEP_ALIVE = 1.0
#: Seconds close() and interpreter exit spend on a last replay and announcement.
FLUSH_TIMEOUT = 2.0


def call_timeout(backend: Backend) -> float | None:
    """The longest a single call to ``backend`` waits for an answer (``None``: unbounded)."""
    seconds = getattr(backend, "call_timeout", None)
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
        return float(seconds)
    return None


class L2Gate:
    """The one way a composition reaches its L2 (see the module docstring). Thread-safe.

    :param l2: the far layer.
    :param l1: the near layer (a replayed delete also evicts it).
    :param ordering: the composition's per-key ordering.
    :param counters: the composition's counters.
    :param breaker: the tier's circuit breaker, or ``None``.
    :param fail_open: absorb L2 availability failures.
    :param replay_limit: the most keys waiting for replay; past it the oldest are dropped.
    :param backplane: announces the keys whose L2 write landed, or ``None``.
    :param on_partial_failure: ``hook(tier, keys, exc)`` for a write that returned normally
        although L2 failed.
    """

    def __init__(
        self,
        l2: Backend,
        l1: Backend,
        ordering: Ordering,
        counters: Counters,
        *,
        breaker: CircuitBreaker | None,
        fail_open: bool,
        replay_limit: int = 10_000,
        backplane: Backplane | None = None,
        on_partial_failure: PartialFailureHook | None = None,
    ) -> None:
        self.l2 = l2
        self.l1 = l1
        self.ordering = ordering
        self.counters = counters
        self.breaker = breaker
        self.fail_open = fail_open
        self.replay_limit = replay_limit
        self.backplane = backplane
        self.on_partial_failure = on_partial_failure
        #: A set's announcement carries its entry and what it replaced in L2 (see
        #: :mod:`tieredcache.tiered.coherence`): the L2 answers ``swap_entries``.
        self.carries = bool(
            backplane is not None
            and backplane.carries_entries
            and callable(getattr(l2, "swap_entries", None))
        )
        self.timeout = call_timeout(l2)
        self.log = RateLimitedLog(logger=logger)
        #: The writes waiting for replay.
        self.queue = ReplayQueue(replay_limit)
        #: Where ``replay_done`` is emitted (set by the composition).
        self.events: Events | None = None
        self._last_failure = 0.0  # monotonic time of the last availability failure
        #: The operation each thread is in (see :meth:`operation`).
        self.scope = OperationScope()
        self._worker = RetryWorker(
            "tieredcache-l2gate",
            self._has_work,
            self._attempt,
            due=self._announce_due,
            keep_alive=WORKER_KEEP_ALIVE,
        )
        self._init_process_state()
        if breaker is not None:
            breaker.on_close(self.wake)
        lifecycle.track(
            self, lifecycle.Stage.CACHES, after_fork="_init_process_state", at_exit="close"
        )

    def _init_process_state(self) -> None:
        # Also the after-fork hook: the parent replays and announces what it queued, and
        # its worker thread does not exist here.
        self.scope.after_fork()
        self.queue.after_fork()
        backplane = self.backplane
        self._announce = Announcements(0.0 if backplane is None else backplane.linger)
        self._worker.after_fork()

    # -- calls --------------------------------------------------------------------------

    def operation(self) -> OperationScope:
        """Group the L2 calls of one caller's operation (``with gate.operation():``): after
        an availability failure, the rest of the operation fails fast instead of waiting
        for another timeout."""
        return self.scope

    def call(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        """Call ``fn(*args)`` on L2 through the breaker (see the module docstring)."""
        scope = self.scope
        failed = scope.failed
        if failed is not None:
            raise BackendUnavailableError(
                f"l2 already failed during this operation: {failed}", backend="l2"
            )
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            raise CircuitOpenError("the circuit breaker of this tier is open", backend="l2")
        try:
            result = fn(*args)
        except BackendUnavailableError as exc:
            self._last_failure = time.monotonic()
            if breaker is not None:
                breaker.record_failure()
            scope.fail(exc)
            raise
        except BaseException:
            # The tier answered (a wrong type, a bad value, KeyError from incr...).
            if breaker is not None:
                breaker.record_success()
            raise
        if breaker is not None:
            breaker.record_success()
        return result

    def wrap_calls(self, wrapper: CallWrapper) -> None:
        """Run every L2 call as ``wrapper(name, call)`` (tracing); ``name`` is the backend
        method's. Instances without a wrapper pay nothing."""
        plain = self.call

        def call(fn: t.Callable[..., T], *args: t.Any) -> T:
            result: T = wrapper(getattr(fn, "__name__", "call"), lambda: plain(fn, *args))
            return result

        self.call = call  # type: ignore[method-assign]

    def lock_timeout(self) -> float | None:
        """How long a leg may wait for an earlier write of the same key."""
        if self.timeout is None:
            return None
        started = self.scope.started
        if started is None:
            return self.timeout
        return max(0.0, started + self.timeout - time.monotonic())

    def _failed_while_waiting(self) -> bool:
        """True if L2 failed for availability after the calling operation began (it waited
        for a key held by a write that then timed out: no point in a second timeout)."""
        started = self.scope.started
        return started is not None and self._last_failure > started

    def absorb(self, kind: str, operation: str, keys: t.Sequence[str], exc: BaseException) -> None:
        """Count and report an L2 failure turned into a miss or an L1-only write."""
        tag_tier(exc, "l2")
        self.counters.slot()[TIERED_INDEX[f"l2_{kind}_errors"]] += 1
        self.log.warning(
            f"l2-{kind}", "tiered: l2 %s failed; serving from l1 (fail-open): %r", operation, exc
        )
        if kind == "write":
            self.report_partial(keys, exc)

    def report_partial(self, keys: t.Sequence[str], exc: BaseException) -> None:
        hook = self.on_partial_failure
        if hook is not None:
            try:
                hook("l2", list(keys), exc)
            except Exception:
                logger.exception("tiered: on_partial_failure hook raised")

    # -- reads --------------------------------------------------------------------------

    def read(self, keys: list[str]) -> dict[str, Entry]:
        """L2's unexpired entries of ``keys``; keys with a queued write are answered by it."""
        found: dict[str, Entry] = {}
        wanted = keys
        touched: dict[str, float | None] = {}
        if self.queue:
            wanted = []
            for key in keys:
                item = self.queue.get(key)
                if item is None:
                    wanted.append(key)
                elif item.op == "set":
                    entry = item.entry
                    assert entry is not None
                    if entry.expires_at is None or entry.expires_at > self.l2.timer():
                        found[key] = entry
                elif item.op == "touch":
                    touched[key] = item.expires_at
                    wanted.append(key)
        if wanted:
            try:
                if len(wanted) == 1:  # a single-key read stays single-key down to the wire
                    entry = self.call(self.l2.get_entry, wanted[0])
                    if entry is not None:
                        found[wanted[0]] = entry
                else:
                    found.update(self.call(self.l2.get_entries, wanted))
            except BackendUnavailableError as exc:
                if not self.fail_open:
                    raise
                self.absorb("read", "read", wanted, exc)
            except BackendResponseError as exc:
                # The server's answer about these keys, not an outage: a miss.
                self.absorb("read", "read", wanted, exc)
            else:
                if self.queue:
                    self.wake()  # L2 answers: replay now
        for key, expires_at in touched.items():
            entry = found.get(key)
            if entry is not None:
                found[key] = entry.replace(expires_at=expires_at)
        return found

    def pending(self, key: str) -> bool:
        """True if a failed write of ``key`` waits for replay (L2 holds an older value)."""
        return key in self.queue

    # -- writes: each runs as the L2 leg of an ordered write ---------------------------

    def leg(
        self, slot: WriteSlot, op: t.Callable[[list[str]], object], replay: ReplayFactory | None
    ) -> Leg:
        """The L2 leg of ``slot`` for a policy to run (see :meth:`run`)."""
        return slot.custom_leg(lambda: self.guarded(slot, op, replay))

    def run(
        self,
        slot: WriteSlot,
        op: t.Callable[[list[str]], object],
        replay: ReplayFactory | None,
        *,
        mark: bool = True,
        supersede: bool = True,
    ) -> object:
        """Run the L2 leg of ``slot`` now, on this thread (and end it)."""
        try:
            return self.guarded(slot, op, replay, mark=mark, supersede=supersede)
        finally:
            slot.end_leg()

    def guarded(
        self,
        slot: WriteSlot,
        op: t.Callable[[list[str]], object],
        replay: ReplayFactory | None,
        *,
        mark: bool = True,
        supersede: bool = True,
    ) -> object:
        """Run ``op`` under the keys' L2 locks, waiting at most the tier's timeout for them.

        A leg that could not get the locks in time is an availability failure: raised, or
        under fail-open queued for replay (``replay`` builds the items; ``None``: raise).
        """
        try:
            return slot.guarded(L2, op, mark=mark, supersede=supersede, timeout=self.lock_timeout())
        except KeyBusyError as exc:
            self._unavailable(slot.keys, slot.seq, exc, replay)
            return None

    def _unavailable(
        self,
        keys: t.Sequence[str],
        seq: int,
        exc: BackendUnavailableError,
        replay: ReplayFactory | None,
    ) -> None:
        if not self.fail_open or replay is None:
            raise exc
        queued = [(key, replay(key, seq)) for key in keys]
        self.absorb("write", queued[0][1].op if queued else "write", keys, exc)
        for key, item in queued:
            self.enqueue(key, item)

    def set_op(self, items: t.Mapping[str, Entry], seq: int) -> t.Callable[[list[str]], object]:
        """The L2 part of a set of ``items`` at ``seq``."""

        def op(live: list[str]) -> None:
            chosen = {k: items[k] for k in live}
            if not self.carries:
                self._write(
                    "set",
                    live,
                    seq,
                    set_replay(items),
                    lambda: self.call(self.l2.set_entries, chosen),
                )
                return
            swapped = self._write(
                "set",
                live,
                seq,
                set_replay(items),
                lambda: self.call(t.cast(t.Any, self.l2).swap_entries, chosen),
                announce=False,
            )
            if swapped is not None:
                self._announce.add_updates(
                    {
                        key: (data, chosen[key].version, previous)
                        for key, (data, previous) in swapped.items()
                    },
                    seq,
                )
                self._worker.ensure()

        return op

    def delete_op(self, seq: int) -> t.Callable[[list[str]], list[str]]:
        """The L2 part of a delete at ``seq``; returns the keys L2 held."""

        def op(live: list[str]) -> list[str]:
            deleted = self._write(
                "delete", live, seq, delete_replay, lambda: self.call(self.l2.delete_each, live)
            )
            return [] if deleted is None else deleted

        return op

    def _write(
        self,
        kind: str,
        live: list[str],
        seq: int,
        replay: ReplayFactory,
        send: t.Callable[[], T],
        *,
        announce: bool = True,
    ) -> T | None:
        """Run ``send()`` (the L2 calls of a write of ``live`` at ``seq``); once it landed,
        supersede older queued replays and announce it (unless ``announce`` is false: the
        caller announces it); when L2 is unavailable, queue it for replay (fail-open) or
        raise."""
        try:
            if self._failed_while_waiting():
                raise BackendUnavailableError("l2 failed while this write waited", backend="l2")
            result = send()
        except BackendUnavailableError as exc:
            if not self.fail_open and self.backplane is not None:
                # The write may have landed and only its reply been lost: announce it (for
                # eviction) once L2 answers again. Under fail-open its replay announces it.
                self._announce.doubt(kind, live, seq)
                self._worker.ensure()
            self._unavailable(live, seq, exc, replay)
            return None
        if announce:
            self.landed(kind, live, seq)
        else:
            self._supersede(live, seq)
        return result

    def touch_op(
        self, key: str, expires_at: float | None, seq: int
    ) -> t.Callable[[list[str]], bool]:
        """The L2 part of a touch at ``seq``."""

        def op(_: list[str]) -> bool:
            try:
                touched: bool = self.call(self.l2.touch_entry, key, expires_at)
            except BackendUnavailableError as exc:
                self._unavailable([key], seq, exc, touch_replay(expires_at))
                return False
            self.landed("touch", [key], seq)
            return touched

        return op

    def landed(self, kind: str, keys: t.Sequence[str], seq: int) -> None:
        """Writes of ``keys`` at ``seq`` reached L2: supersede older queued ones, announce."""
        self._supersede(keys, seq)
        self.announce(kind, keys, seq)

    def _supersede(self, keys: t.Sequence[str], seq: int) -> None:
        """Drop queued replays of ``keys`` older than ``seq``."""
        if self.queue:
            self.queue.supersede(keys, seq)
            self.wake()

    # -- the replay queue ---------------------------------------------------------------

    def enqueue(self, key: str, item: ReplayItem) -> None:
        """Remember a failed write of ``key``; a newer one replaces an older one."""
        dropped = self.queue.add(key, item)
        self._worker.ensure()
        if dropped:
            self.log.warning(
                "replay-dropped",
                "tiered: replay queue full (%d); dropped the oldest failed writes, e.g. %r",
                self.replay_limit,
                dropped[0],
            )

    def replay(self) -> int:
        """Replay the queued writes now; how many landed. Stops at the first outage.

        Emits ``replay_done`` (see :mod:`tieredcache.events`) once the queue is empty.
        """
        landed = run_replays(self)
        if landed and not self.queue and self.events is not None:
            self.events.emit(REPLAY_DONE, replayed=landed)
        return landed

    # -- announcements ------------------------------------------------------------------

    def announce(self, kind: str, keys: t.Sequence[str], seq: int) -> None:
        """Queue an announcement of ``keys`` (their L2 write has landed)."""
        if self.backplane is None:
            return
        self._announce.add(kind, keys, seq)
        self._worker.ensure()

    def send_announcements(self) -> bool:
        """Send what is queued; False if the backplane failed (the rest stays queued)."""
        return self.backplane is None or self._announce.send(self.backplane)

    # -- the worker ---------------------------------------------------------------------

    @property
    def background(self) -> bool:
        """Run replays and announcements on the gate's worker thread. Tests that drive them
        step by step (:meth:`replay`, :meth:`send_announcements`) turn it off."""
        return self._worker.background

    @background.setter
    def background(self, on: bool) -> None:
        self._worker.background = on

    def wake(self) -> None:
        """Ask the worker to try L2 now (the tier answers again)."""
        self._worker.wake()

    def _announce_due(self) -> float:
        # Replays are tried at once; announcements may wait for their linger.
        return 0.0 if self.queue else self._announce.due()

    def _has_work(self) -> bool:
        return bool(self.queue) or bool(self._announce) or bool(self._announce.doubtful)

    def _attempt(self) -> bool:
        if self._announce.doubtful and not self._probe():
            return False
        sent = self.send_announcements()
        if self.queue:
            self.replay()
        return sent and not self.queue

    def _probe(self) -> bool:
        """Whether L2 answers a read; if so, the doubtful writes' announcements are queued."""
        try:
            self.call(self.l2.get_entries, ["__tieredcache_probe__"])
        except BackendError:
            return False
        self._announce.release_doubts()
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued for replay or announcement; False on timeout."""
        return self._worker.wait_idle(timeout)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """One last bounded attempt to replay and announce what is queued (close, exit)."""
        deadline = time.monotonic() + timeout
        worker = self._worker
        if worker.thread is not None and worker.thread is not threading.current_thread():
            worker.wake()  # let the running worker finish its attempt, then take over
            worker.wait_idle(max(0.0, deadline - time.monotonic()))
        if self.queue and time.monotonic() < deadline:
            self.replay()
        if self._announce.doubtful and time.monotonic() < deadline:
            self._probe()
        if self._announce and time.monotonic() < deadline:
            self.send_announcements()
        return not self._has_work()

    def close(self) -> None:
        """Flush (bounded), then stop the worker; what is still queued is logged as lost."""
        self.flush()
        self._worker.stop(FLUSH_TIMEOUT)
        lost = len(self.queue)
        if lost:
            logger.warning(
                "tiered: closing with %d failed l2 write(s) not replayed (l2 unreachable)", lost
            )

    # -- introspection ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.queue)

    def reset_stats(self) -> None:
        """Set the replay and announcement counters to zero."""
        self.queue.reset_stats()
        self._announce.errors = 0

    def stats(self) -> dict[str, t.Any]:
        figures: dict[str, t.Any] = {
            "fail_open": self.fail_open,
            **self.queue.stats(),
            "announce_pending": len(self._announce),
            "announce_errors": self._announce.errors,
        }
        if self.breaker is not None:
            figures["breaker"] = self.breaker.stats()
        return figures
