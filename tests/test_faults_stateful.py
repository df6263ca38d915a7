"""Stateful property tests of the guarantees under faults: two compositions ("processes") on
one L2, L2 outages and recoveries, fail-open replay, backplane announcements and delivery,
and fork.

The machine drives every background step by hand (the gates' workers are off): replays,
announcements and deliveries happen only when a rule says so, so Hypothesis explores their
orders. It checks, after every step:

- **R4** nothing expired is returned, by any read of either process;
- **W5** no resurrection within a process: after a process wrote or deleted a key, it never
  returns a value written before that, by anyone;
- own writes: a process with a write of a key waiting for replay answers from it, and a
  process whose write of a key is the newest one reads exactly it;
- convergence: after a full sync (recover, replay, announce, deliver) both processes read
  what L2 holds, and L2 holds what last-writer-wins by version gives: a late replay never
  overwrites a newer *write* of the other process. A delete leaves no version behind, and
  nor does a newer write that has expired, so a set of another process that waited for
  replay may land after either (the documented limit of fail-open across processes); the
  model allows exactly that and nothing more.
"""

from __future__ import annotations

import typing as t

import hypothesis.strategies as st
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from tieredcache import MemoryBackend
from tieredcache import OptimisticParallelWrite
from tieredcache import RaceWrite
from tieredcache import SequentialWrite
from tieredcache import TieredCache
from tieredcache.offload import InlineOffload
from tieredcache.testing.backplane import LocalBackplaneHub
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.faults import FaultyBackend
from tieredcache.testing.fork import report_from_child

KEYS = st.sampled_from("abc")
PROCS = st.sampled_from([0, 1])
TTLS = st.sampled_from([None, 1.0, 5.0])
OUTAGE = ("get", "set", "delete", "touch", "add")
WRITES = {
    "sequential": SequentialWrite,
    "parallel": OptimisticParallelWrite,
    "race": RaceWrite,
}


class Write(t.NamedTuple):
    order: int  # call order across both processes (versions follow it)
    proc: int
    value: int | None  # None: a delete
    expires_at: float | None


class FaultMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_000_000.0)
        self.hub = LocalBackplaneHub()
        self.store = MemoryBackend(timer=self.clock, maxsize=1000)
        self.outage = False
        self.order = 0
        self.values = 0
        self.expiry: dict[int, float | None] = {}  # value -> its expiry
        self.history: dict[str, list[Write]] = {}
        self.pending: list[dict[str, Write]] = [{}, {}]  # per process: queued for replay
        self.l2: dict[str, Write] = {}  # what L2 holds (deletes remove the key)
        # Values of the other process that were queued for replay when a write was made:
        # they may land after it (see the module docstring).
        self.replayable: dict[int, set[int]] = {}
        self.caches: list[TieredCache] = []
        self.l2s: list[FaultyBackend] = []

    @initialize(write=st.sampled_from(sorted(WRITES)))
    def build(self, write: str) -> None:
        for _ in range(2):
            l2 = FaultyBackend(self.store, "l2")
            cache = TieredCache(
                MemoryBackend(timer=self.clock, maxsize=1000),
                l2,
                write=WRITES[write](),
                offload=InlineOffload(),
                fail_open=True,
                breaker=None,
                backplane=self.hub.new(),
                timer=self.clock,
            )
            cache.gate.background = False
            self.caches.append(cache)
            self.l2s.append(l2)

    def teardown(self) -> None:
        for cache in self.caches:
            cache.close()

    # -- model ----------------------------------------------------------------------------

    def _record(self, proc: int, key: str, value: int | None, expires_at: float | None) -> None:
        self.order += 1
        write = Write(self.order, proc, value, expires_at)
        self.history.setdefault(key, []).append(write)
        other = self.pending[1 - proc].get(key)
        self.replayable[write.order] = (
            {other.value} if other is not None and other.value is not None else set()
        )
        if self.outage:
            self.pending[proc][key] = write
        else:
            self.pending[proc].pop(key, None)  # a newer write of the key landed
            self._land(key, write)

    def _land(self, key: str, write: Write) -> None:
        if write.value is None:
            self.l2.pop(key, None)
        else:
            self.l2[key] = write

    def _replay_lands(self, key: str, write: Write) -> None:
        current = self.l2.get(key)
        # An expired entry leaves no version behind in L2, as a delete does not.
        if current is None or current.order < write.order or self._live(current) is None:
            self._land(key, write)

    def _live(self, write: Write) -> int | None:
        if write.value is None:
            return None
        if write.expires_at is not None and write.expires_at <= self.clock():
            return None
        return write.value

    # -- rules ----------------------------------------------------------------------------

    @rule(proc=PROCS, key=KEYS, ttl=TTLS)
    def set(self, proc: int, key: str, ttl: float | None) -> None:
        self.values += 1
        value = self.values
        expires_at = None if ttl is None else self.clock() + ttl
        self.expiry[value] = expires_at
        self.caches[proc].set(key, value, ttl=ttl)
        self._record(proc, key, value, expires_at)

    @rule(proc=PROCS, key=KEYS)
    def delete(self, proc: int, key: str) -> None:
        self.caches[proc].delete(key)
        self._record(proc, key, None, None)

    @rule(proc=PROCS, key=KEYS)
    def get(self, proc: int, key: str) -> None:
        self._check_read(proc, key, self.caches[proc].get(key))

    @rule(proc=PROCS, keys=st.lists(KEYS, min_size=1, max_size=3, unique=True))
    def get_many(self, proc: int, keys: list[str]) -> None:
        found = self.caches[proc].get_many(keys)
        for key in keys:
            self._check_read(proc, key, found.get(key))

    @rule(seconds=st.sampled_from([0.5, 2.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def l2_outage(self) -> None:
        self.outage = True
        self.hub.fail()
        for l2 in self.l2s:
            l2.fail(*OUTAGE)

    @rule()
    def l2_recovers(self) -> None:
        self.outage = False
        self.hub.recover()
        for l2 in self.l2s:
            l2.recover()

    @rule(proc=PROCS)
    def replay(self, proc: int) -> None:
        self.caches[proc].replay()
        if not self.outage:
            for key, write in sorted(self.pending[proc].items(), key=lambda kv: kv[1].order):
                self._replay_lands(key, write)
            self.pending[proc].clear()

    @rule(proc=PROCS)
    def announce(self, proc: int) -> None:
        self.caches[proc].gate.send_announcements()

    @rule()
    def deliver(self) -> None:
        self.hub.deliver()

    @rule()
    def sync(self) -> None:
        """Recover and run every background step: both processes converge."""
        self.l2_recovers()
        for proc in (0, 1):
            self.replay(proc)
        for proc in (0, 1):
            self.announce(proc)
        self.deliver()
        for key in self.history:
            held = self.l2.get(key)
            expected = None if held is None else self._live(held)
            for proc in (0, 1):
                assert self.caches[proc].get(key) == expected, (proc, key, held)

    @rule(proc=PROCS, key=KEYS)
    def fork(self, proc: int, key: str) -> None:
        """A forked child can write and read through the inherited cache at once."""
        cache = self.caches[proc]

        def child() -> bytes:
            self.l2s[proc].recover()
            cache.set(key, -1)
            ok = cache.get(key) == -1 and cache.drain(10)
            for other in "abc":
                value = cache.get(other)
                if value not in (None, -1) and self.expiry[value] is not None:
                    ok = ok and self.expiry[value] > self.clock()
            return b"ok" if ok else b"bad"

        assert report_from_child(child, 20) == b"ok"

    # -- checks ---------------------------------------------------------------------------

    def _check_read(self, proc: int, key: str, result: int | None) -> None:
        writes = self.history.get(key, [])
        # R4: nothing expired.
        if result is not None:
            expiry = self.expiry[result]
            assert expiry is None or expiry > self.clock(), (key, result)
        queued = self.pending[proc].get(key)
        if queued is not None:
            # A write waiting for replay answers for the key (L2 holds an older value).
            assert result == self._live(queued), (proc, key, queued, result)
            return
        own = [w for w in writes if w.proc == proc]
        if not own:
            return
        latest_own = own[-1]
        if writes[-1] is latest_own and not self.replayable[latest_own.order]:
            # Exact while L2 answers; during an outage L1 may have lost its copy (an older
            # announcement of the other process evicts it), and a fail-open miss is allowed.
            expected = {self._live(latest_own)} | ({None} if self.outage else set())
            assert result in expected, (proc, key, latest_own, result)
            return
        # W5: nothing written before this process's latest write of the key comes back.
        allowed = {self._live(latest_own), None}
        allowed |= {w.value for w in writes if w.order > latest_own.order}
        allowed |= self.replayable[latest_own.order]
        assert result in allowed, (proc, key, result, writes)

    @invariant()
    def nothing_left_in_flight(self) -> None:
        for cache in self.caches:
            assert len(cache._ordering) == 0


TestFaults = FaultMachine.TestCase
TestFaults.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
