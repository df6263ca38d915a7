"""A state machine over ThreadPoolOffload: O1 dedup, O2 bounds, O4 accounting, O3 drain.

Tasks run on real worker threads and block on their own Event until a rule releases them. A
task that overflows inline runs on the machine's own thread and must not block there, so it
returns at once. Checks that depend on timing only assert what holds whatever the timing.
"""

from __future__ import annotations

import threading

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import initialize
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from tieredcache.offload import OffloadKey
from tieredcache.offload import OffloadStats
from tieredcache.offload import ThreadPoolOffload

WAIT = 10.0  # seconds; only ever reached when something is broken


class TaskFailed(Exception):
    pass


class Task:
    """A task that records where and how often it ran, and blocks until released."""

    def __init__(self, machine: OffloadMachine, key: OffloadKey, fail: bool) -> None:
        self.machine = machine
        self.key = key
        self.fail = fail
        self.gate = threading.Event()
        self.finished = threading.Event()
        self.runs = 0
        self.ran_inline = False
        self.raised = False
        self.settled = False  # finished and seen by a drain() that returned True

    @property
    def held(self) -> bool:
        """Accepted, not released and not run inline: certainly still in flight."""
        return not self.gate.is_set() and not self.ran_inline

    def __call__(self) -> None:
        self.machine.enter(self)
        try:
            if threading.get_ident() == self.machine.thread:
                self.ran_inline = True  # the machine's thread cannot wait for its own release
            elif not self.gate.wait(WAIT):
                self.machine.problems.append(f"{self.key!r} was never released")
            if self.fail:
                self.raised = True
                raise TaskFailed(repr(self.key))
        finally:
            self.machine.leave(self)


def balanced(s: OffloadStats) -> bool:
    finished = s.completed + s.failed + s.cancelled + s.deduplicated + s.rejected
    return s.submitted == finished + s.active and s.active == s.pending + s.running + s.external


class OffloadMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.offload: ThreadPoolOffload | None = None
        self.lock = threading.Lock()
        self.on_workers = 0
        self.peak = 0
        self.started_per_key: dict[OffloadKey, int] = {}
        self.problems: list[str] = []
        self.errors: list[BaseException] = []
        self.submitted: list[Task] = []
        self.accepted: list[Task] = []
        self.deduplicated = 0
        self.rejected = 0

    # -- called by tasks, on any thread ------------------------------------------------------------

    def enter(self, task: Task) -> None:
        with self.lock:
            task.runs += 1
            if threading.get_ident() != self.thread:
                self.on_workers += 1
                self.peak = max(self.peak, self.on_workers)
            if task.key.dedup:
                count = self.started_per_key.get(task.key, 0) + 1
                self.started_per_key[task.key] = count
                if count > 1:
                    self.problems.append(f"two tasks for {task.key!r} run at once")

    def leave(self, task: Task) -> None:
        with self.lock:
            if threading.get_ident() != self.thread:
                self.on_workers -= 1
            if task.key.dedup:
                self.started_per_key[task.key] -= 1
        task.finished.set()

    # -- rules -------------------------------------------------------------------------------------

    @initialize(
        max_workers=st.integers(1, 3),
        max_pending=st.integers(0, 4),
        overflow=st.sampled_from(["inline", "reject"]),
    )
    def start(self, max_workers: int, max_pending: int, overflow: str) -> None:
        self.offload = ThreadPoolOffload(
            max_workers, max_pending, overflow=overflow, on_error=self.on_error
        )

    def on_error(self, key: OffloadKey, exc: BaseException) -> None:
        self.errors.append(exc)

    @rule(
        name=st.sampled_from(["a", "b", None]),
        kind=st.sampled_from(["refresh", "loser"]),
        fail=st.booleans(),
    )
    def register(self, name: str | None, kind: str, fail: bool) -> None:
        offload = self._offload()
        key = OffloadKey.auto(kind) if name is None else OffloadKey.keyed(name, kind)
        task = Task(self, key, fail)
        same_key = [other for other in self.accepted if other.key == key]
        before = offload.stats()
        accepted = offload.register(key, task)
        after = offload.stats()
        self.submitted.append(task)
        full = before.pending >= offload.max_pending  # pending only shrinks meanwhile

        if accepted:
            self.accepted.append(task)
            # The key cannot have been free while an earlier task for it had not yet finished.
            assert all(other.finished.is_set() for other in same_key), key
            assert (after.inline - before.inline) == int(task.ran_inline)
            if task.ran_inline:
                assert task.finished.is_set() and full and offload.overflow == "inline"
            return
        assert task.runs == 0
        if any(other.held for other in same_key):
            assert after.deduplicated == before.deduplicated + 1
        if after.deduplicated > before.deduplicated:
            self.deduplicated += 1
            # A key is free again however its task ended: no stale entry after a drain.
            assert key.dedup and not all(other.settled for other in same_key)
        else:
            self.rejected += 1
            assert after.rejected == before.rejected + 1
            assert full and offload.overflow == "reject"

    # No preconditions: which tasks are still held depends on thread timing, and what
    # Hypothesis draws must not.
    @rule(index=st.integers(0, 50), fail=st.none() | st.booleans())
    def release(self, index: int, fail: bool | None) -> None:
        held = [task for task in self.accepted if task.held]
        if not held:
            return
        task = held[index % len(held)]
        if fail is not None:
            task.fail = fail  # read by the task only after the gate opens
        task.gate.set()

    @rule()
    def release_all(self) -> None:
        for task in self.accepted:
            task.gate.set()

    @rule()
    def drain(self) -> None:
        offload = self._offload()
        if any(task.held for task in self.accepted):
            assert offload.drain(timeout=0) is False
        else:
            assert offload.drain(WAIT)
            self._check_quiescent()
            for task in self.accepted:
                task.settled = True

    # -- invariants --------------------------------------------------------------------------------

    @invariant()
    def accounting_and_bounds(self) -> None:
        if self.offload is None:
            return
        s = self.offload.stats()
        assert balanced(s), s
        assert s.submitted == len(self.submitted)
        assert s.deduplicated == self.deduplicated and s.rejected == self.rejected
        assert 0 <= s.running <= self.offload.max_workers, s
        assert 0 <= s.pending <= self.offload.max_pending, s
        assert s.active >= sum(task.held for task in self.accepted)
        with self.lock:
            assert self.peak <= self.offload.max_workers
        assert self.problems == []

    def _check_quiescent(self) -> None:
        s = self._offload().stats()
        failing = sum(task.raised for task in self.accepted)
        assert s.active == 0 and balanced(s), s
        assert (s.completed, s.failed, s.cancelled) == (len(self.accepted) - failing, failing, 0)
        assert len(self.errors) == failing
        assert all(task.runs == 1 for task in self.accepted)
        assert all(task.runs == 0 for task in self.submitted if task not in self.accepted)
        assert s.inline == sum(task.ran_inline for task in self.accepted)

    def _offload(self) -> ThreadPoolOffload:
        assert self.offload is not None
        return self.offload

    def teardown(self) -> None:
        if self.offload is None:
            return
        for task in self.submitted:
            task.gate.set()
        drained = self.offload.drain(WAIT)
        self.offload.close(wait=drained)
        assert drained, "tasks still running after every gate opened"
        self._check_quiescent()
        assert self.problems == []


OffloadMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
TestOffloadMachine = OffloadMachine.TestCase
