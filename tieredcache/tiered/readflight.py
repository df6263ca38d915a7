"""Concurrent L1 misses of one key share one L2 read.

When a hot key leaves L1 (an invalidation, an expiry), every thread that asks for it
misses at once. Without sharing, sixteen threads make sixteen identical L2 reads. With a
:class:`ReadFlights` table, the first caller (the *leader*) reads the key from L2; callers
that arrive while that read is in flight (*waiters*) wait for its answer instead, at most
the L2 timeout.

Sharing never hands a waiter a value older than a write it made itself: a waiter joins a
read in flight only if no write of the key was running when that read began, and none has
begun since (the condition under which the leader may refill L1, see
:meth:`.Ordering.shareable`), and only while the read is still registered in the ordering,
which tells it of such writes. Otherwise it starts a read of its own, which replaces the
old one in the table. A write this process made before it waited has therefore either
landed in L2 (or in the replay queue) before the shared read began, or makes the waiter
read again.

A batch read leads its own keys first and only then waits for the others' reads, so two
batches that share keys never wait for each other in a cycle.

The table holds only keys with a read in flight, and is reset in a forked child (the
leaders of the parent's reads do not exist there, see :mod:`tieredcache.lifecycle`).
"""

from __future__ import annotations

import threading
import typing as t

from tieredcache import lifecycle
from tieredcache.entry import Entry

if t.TYPE_CHECKING:
    from tieredcache.tiered.ordering import Ordering
    from tieredcache.tiered.ordering import ReadToken

__all__ = ["BatchFlight", "Flight", "ReadFlights"]


class Flight:
    """One L2 read of one key in flight: its leader's token and, once done, its answer."""

    __slots__ = ("_done", "entry", "error", "token", "waiters")

    def __init__(self, token: ReadToken) -> None:
        # A token taken while a write of the key ran never allows a refill, nor sharing.
        self.token = token
        self.entry: Entry | None = None
        self.error: BaseException | None = None
        self.waiters = 0
        # Made for the first waiter (most reads have none), under the table's lock while
        # the flight is in the table, so always before the leader's finish().
        self._done: threading.Event | None = None

    def add_waiter(self, key: str) -> None:
        """One more caller will :meth:`wait` for ``key`` (called under the table's lock)."""
        self.waiters += 1
        if self._done is None:
            self._done = threading.Event()

    def finish(self, entry: Entry | None, error: BaseException | None = None) -> None:
        self.entry = entry
        self.error = error
        done = self._done
        if done is not None:
            done.set()

    def wait(self, timeout: float | None) -> bool:
        """Wait at most ``timeout`` seconds for the leader's answer; True if it came."""
        done = self._done
        assert done is not None, "wait() without add_waiter()"
        return done.wait(timeout)

    def answer(self) -> Entry | None:
        """The leader's entry (``None``: a miss), or its exception re-raised."""
        if self.error is not None:
            raise self.error
        return self.entry

    def token_for(self, key: str) -> ReadToken:
        """The leader's token for ``key`` (one key: the flight's own)."""
        return self.token

    def answer_for(self, key: str) -> Entry | None:
        """:meth:`answer` for ``key``."""
        return self.answer()

    def waiters_for(self, key: str) -> int:
        """How many callers wait for ``key``'s answer."""
        return self.waiters


class BatchFlight(Flight):
    """One batch read's L2 read of every key it leads: one flight for all of them, its
    entries answered per key."""

    __slots__ = ("entries", "tokens", "waiting")

    def __init__(self, tokens: t.Mapping[str, ReadToken]) -> None:
        super().__init__(_NO_TOKEN)
        self.tokens = tokens
        self.entries: t.Mapping[str, Entry] = {}
        self.waiting: dict[str, int] = {}

    def add_waiter(self, key: str) -> None:
        super().add_waiter(key)
        self.waiting[key] = self.waiting.get(key, 0) + 1

    def finish_all(self, entries: t.Mapping[str, Entry], error: BaseException | None) -> None:
        """The batch's read ended: ``entries`` by key (a key absent: a miss), or ``error``."""
        self.entries = entries
        self.finish(None, error)

    def token_for(self, key: str) -> ReadToken:
        return self.tokens[key]

    def answer_for(self, key: str) -> Entry | None:
        if self.error is not None:
            raise self.error
        return self.entries.get(key)

    def waiters_for(self, key: str) -> int:
        return self.waiting.get(key, 0)


class ReadFlights:
    """The process's table of L2 reads in flight, per key. Thread-safe.

    :param ordering: the composition's per-key ordering (decides who may share a read).
    """

    def __init__(self, ordering: Ordering) -> None:
        self.ordering = ordering
        self.shared = 0  # reads answered by another caller's read
        self.led = 0  # reads that went to L2
        self._reset_after_fork()
        lifecycle.track(self, lifecycle.Stage.STATE, after_fork="_reset_after_fork")

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    def join(self, key: str, token: ReadToken) -> tuple[Flight, bool]:
        """The flight for ``key`` and whether the caller leads it (reads L2 itself).

        A leader must call :meth:`land` exactly once, however its read ends.
        """
        ordering = self.ordering
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None and ordering.shareable(key, flight.token_for(key)):
                flight.add_waiter(key)
                self.shared += 1
                return flight, False
            flight = Flight(token)
            self._flights[key] = flight
            self.led += 1
            return flight, True

    def join_many(
        self, keys: t.Iterable[str], token_of: t.Mapping[str, ReadToken]
    ) -> tuple[list[str], BatchFlight, dict[str, Flight]]:
        """:meth:`join` for each of ``keys`` (a batch read), under one lock: the keys the
        caller leads, the one flight it leads them with, and the flights it shares, by key.

        The leader must call :meth:`land_many` exactly once, however its read ends.
        """
        ordering = self.ordering
        led: list[str] = []
        shared: dict[str, Flight] = {}
        batch = BatchFlight(token_of)
        with self._lock:
            flights = self._flights
            for key in keys:
                flight = flights.get(key)
                if flight is not None and ordering.shareable(key, flight.token_for(key)):
                    flight.add_waiter(key)
                    shared[key] = flight
                else:
                    flights[key] = batch
                    led.append(key)
            self.shared += len(shared)
            self.led += len(led)
        return led, batch, shared

    def land_many(
        self,
        led: t.Sequence[str],
        batch: BatchFlight,
        found: t.Mapping[str, Entry],
        error: BaseException | None = None,
    ) -> None:
        """The batch's read of the ``led`` keys ended: hand its answers to the waiters."""
        with self._lock:
            flights = self._flights
            for key in led:
                if flights.get(key) is batch:
                    del flights[key]
        batch.finish_all(found, error)

    def land(
        self, key: str, flight: Flight, entry: Entry | None, error: BaseException | None = None
    ) -> None:
        """The leader's read of ``key`` ended: hand the answer to the waiters."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.finish(entry, error)

    def waiting(self, key: str) -> int:
        """How many callers wait for the read of ``key`` in flight (0 if none)."""
        with self._lock:
            flight = self._flights.get(key)
            return 0 if flight is None else flight.waiters_for(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)

    def stats(self) -> dict[str, int]:
        """``l2_reads_led`` (reads sent to L2) and ``l2_reads_shared`` (answered by another's)."""
        return {"l2_reads_led": self.led, "l2_reads_shared": self.shared}

    def reset(self) -> None:
        """Set the counters to zero."""
        self.led = self.shared = 0


#: The token of a batch flight itself (its keys have their own, see BatchFlight.token_for).
_NO_TOKEN: t.Any = (None, -1, -1)
