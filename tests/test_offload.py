"""Offload: keys, O1 deduplication, O2 bounds, O3 shutdown, O4 accounting, and exit-time drain.

Ordering between threads is controlled with Events and Barriers; every blocking wait has a
timeout, so a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import typing as t
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tieredcache.errors import ConfigurationError
from tieredcache.errors import OffloadError
from tieredcache.offload import DisabledOffload
from tieredcache.offload import InlineOffload
from tieredcache.offload import Offload
from tieredcache.offload import OffloadKey
from tieredcache.offload import OffloadStats
from tieredcache.offload import ThreadPoolOffload
from tieredcache.offload import default_offload
from tieredcache.offload import set_default_offload

WAIT = 5.0  # seconds; only ever reached when something is broken
ROOT = pathlib.Path(__file__).resolve().parent.parent

T = t.TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------------


def balanced(s: OffloadStats) -> bool:
    """The accounting invariant, both halves."""
    finished = s.completed + s.failed + s.cancelled + s.deduplicated + s.rejected
    return s.submitted == finished + s.active and s.active == s.pending + s.running + s.external


class Harness:
    """Creates gates and offloads; at teardown opens every gate, then drains and closes."""

    def __init__(self) -> None:
        self.gates: list[threading.Event] = []
        self.offloads: list[Offload] = []

    def gate(self) -> threading.Event:
        event = threading.Event()
        self.gates.append(event)
        return event

    def pool(self, *args: t.Any, **kwargs: t.Any) -> ThreadPoolOffload:
        offload = ThreadPoolOffload(*args, **kwargs)
        self.offloads.append(offload)
        return offload

    def teardown(self) -> None:
        for gate in self.gates:
            gate.set()
        stuck = [o for o in self.offloads if not o.drain(WAIT)]
        for offload in self.offloads:
            offload.close(wait=offload not in stuck)
        assert stuck == [], "offloads still busy at teardown"


@pytest.fixture
def harness() -> t.Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.teardown()


def in_threads(n: int, fn: t.Callable[[int], T]) -> list[T]:
    """Run ``fn(i)`` on ``n`` threads released together by a Barrier; re-raise their errors."""
    barrier = threading.Barrier(n)
    results: list[t.Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait(WAIT)
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "threads did not finish"
    if errors:
        raise errors[0]
    return results


class Concurrency:
    """Counts how many tasks are inside ``with tracker:`` at once, and the peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.current += 1
            self.peak = max(self.peak, self.current)

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.current -= 1


def blocker(gate: threading.Event, started: threading.Event | None = None) -> t.Callable[[], None]:
    def task() -> None:
        if started is not None:
            started.set()
        assert gate.wait(WAIT)

    return task


def noop() -> None:
    pass


def then_set(event: threading.Event, fn: t.Callable[[], object]) -> t.Callable[[], None]:
    """A callable that runs ``fn`` and then sets ``event``."""

    def run() -> None:
        fn()
        event.set()

    return run


# -- OffloadKey ------------------------------------------------------------------------------------


def test_key_identity_and_dedup_flags() -> None:
    keyed = OffloadKey.keyed("user:1", "refresh")
    assert keyed == OffloadKey.keyed("user:1", "refresh")
    assert hash(keyed) == hash(OffloadKey.keyed("user:1", "refresh"))
    assert keyed != OffloadKey.keyed("user:1", "refill"), "kind is part of the identity"
    assert keyed != OffloadKey.keyed("user:2", "refresh")
    assert keyed != OffloadKey.explicit("refresh", "user:1"), "the variant is too"
    assert OffloadKey.explicit("warm", "x") == OffloadKey.explicit("warm", "x")
    assert keyed.dedup and OffloadKey.explicit("warm", "x").dedup
    a, b = OffloadKey.auto("loser"), OffloadKey.auto("loser")
    assert a != b and not a.dedup and not b.dedup
    assert a.kind == "loser" and keyed.kind == "refresh"


def test_key_is_immutable_readable_and_checked() -> None:
    key = OffloadKey.keyed("user:1", "refresh")
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.kind = "other"  # type: ignore[misc]
    assert "user:1" in repr(key) and "refresh" in repr(key) and "keyed" in repr(key)
    assert "explicit" in repr(OffloadKey.explicit("warm", "x"))
    assert "auto" in repr(OffloadKey.auto("loser"))
    with pytest.raises(TypeError):
        OffloadKey.keyed(b"user:1", "refresh")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OffloadKey("other", "k", "i")  # type: ignore[arg-type]


def test_auto_ids_are_unique_across_threads() -> None:
    keys = in_threads(8, lambda i: [OffloadKey.auto("loser") for _ in range(200)])
    flat = [key for chunk in keys for key in chunk]
    assert len(set(flat)) == len(flat)


@given(st.text(), st.text(), st.text(), st.text())
def test_keyed_equality_is_exactly_key_and_kind(k1: str, kind1: str, k2: str, kind2: str) -> None:
    a, b = OffloadKey.keyed(k1, kind1), OffloadKey.keyed(k2, kind2)
    assert (a == b) == ((k1, kind1) == (k2, kind2))
    assert (a == b) <= (hash(a) == hash(b))
    assert OffloadKey.keyed(k1, kind1) != OffloadKey.explicit(kind1, k1)


# -- O1: deduplication -----------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["return", "raise"])
def test_o1_concurrent_registers_of_one_key_run_one_task(harness: Harness, ending: str) -> None:
    offload = harness.pool(max_workers=4)
    key = OffloadKey.keyed("user:1", "refresh")
    gate, started = harness.gate(), threading.Event()
    runs: list[int] = []

    def task() -> None:
        runs.append(threading.get_ident())
        started.set()
        assert gate.wait(WAIT)
        if ending == "raise":
            raise RuntimeError("refresh failed")

    k = 8
    results = in_threads(k, lambda i: offload.register(key, task))
    assert sorted(results) == [False] * (k - 1) + [True]
    assert started.wait(WAIT)
    s = offload.stats()
    assert (s.submitted, s.deduplicated, s.active) == (k, k - 1, 1) and balanced(s)

    gate.set()
    assert offload.drain(WAIT)
    s = offload.stats()
    assert len(runs) == 1
    assert (s.completed, s.failed) == ((1, 0) if ending == "return" else (0, 1))

    # However it ended, the key is free again.
    again = threading.Event()
    assert offload.register(key, again.set)
    assert offload.drain(WAIT) and again.is_set()


def test_o1_same_cache_key_other_kind_is_not_deduplicated(harness: Harness) -> None:
    offload = harness.pool(max_workers=2)
    gate = harness.gate()
    assert offload.register(OffloadKey.keyed("user:1", "refresh"), blocker(gate))
    assert offload.register(OffloadKey.keyed("user:1", "refill"), blocker(gate))
    assert not offload.register(OffloadKey.keyed("user:1", "refresh"), noop)
    assert offload.register(OffloadKey.auto("refresh"), blocker(gate))
    assert offload.register(OffloadKey.auto("refresh"), blocker(gate)), "auto keys never dedup"
    assert offload.stats().deduplicated == 1


def test_o1_instant_tasks_never_leave_a_stale_key(harness: Harness) -> None:
    offload = harness.pool(max_workers=2)
    key = OffloadKey.keyed("user:1", "refresh")
    for _ in range(200):
        assert offload.register(key, noop)
        assert offload.drain(WAIT)
    s = offload.stats()
    assert (s.completed, s.deduplicated) == (200, 0)


def test_o1_key_is_free_after_cancellation_at_close(harness: Harness) -> None:
    offload = harness.pool(max_workers=1)
    gate, started = harness.gate(), threading.Event()
    assert offload.register(OffloadKey.auto("blocker"), blocker(gate, started))
    assert started.wait(WAIT)
    key = OffloadKey.keyed("user:1", "refresh")
    ran: list[int] = []
    results = in_threads(6, lambda i: offload.register(key, lambda: ran.append(i)))
    assert sorted(results) == [False] * 5 + [True]
    assert offload.stats().pending == 1

    offload.close(wait=False)
    s = offload.stats()
    assert (s.cancelled, s.pending, s.running, s.deduplicated) == (1, 0, 1, 5) and balanced(s)
    assert key not in offload._inflight, "a cancelled task must free its key"
    gate.set()
    offload.close(wait=True)
    s = offload.stats()
    assert ran == [] and (s.completed, s.active) == (1, 0) and balanced(s)


def test_o1_key_is_free_after_an_adopted_future_is_cancelled(harness: Harness) -> None:
    offload = harness.pool()
    key = OffloadKey.keyed("user:1", "refresh")
    future: Future[None] = Future()
    assert offload.adopt(key, future)
    assert not offload.register(key, noop)
    assert future.cancel()
    s = offload.stats()
    assert (s.cancelled, s.deduplicated, s.active) == (1, 1, 0) and balanced(s)
    ran = threading.Event()
    assert offload.register(key, ran.set)
    assert offload.drain(WAIT) and ran.is_set()


# -- O2: bounds ------------------------------------------------------------------------------------


def test_o2_running_never_exceeds_max_workers(harness: Harness) -> None:
    offload = harness.pool(max_workers=2, max_pending=100)
    gate, tracker = harness.gate(), Concurrency()
    started = threading.Semaphore(0)

    def task() -> None:
        with tracker:
            started.release()
            assert gate.wait(WAIT)

    for _ in range(10):
        assert offload.register(OffloadKey.auto("work"), task)
    assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
    s = offload.stats()
    assert (s.running, s.pending, s.inline) == (2, 8, 0) and balanced(s)
    assert tracker.current == 2

    gate.set()
    assert offload.drain(WAIT)
    assert tracker.peak <= 2
    assert offload.stats().completed == 10


def test_o2_bound_holds_with_many_producers(harness: Harness) -> None:
    offload = harness.pool(max_workers=2, max_pending=3)
    on_workers, on_producers = Concurrency(), Concurrency()
    worker_runs: list[int] = []

    def task() -> None:
        on_worker = threading.current_thread().name.startswith("tieredcache-offload")
        with on_workers if on_worker else on_producers:
            if on_worker:
                worker_runs.append(1)
            sum(range(2000))

    in_threads(4, lambda i: [offload.register(OffloadKey.auto("w"), task) for _ in range(50)])
    assert offload.drain(WAIT)
    s = offload.stats()
    assert s.completed == 200 and s.completed == len(worker_runs) + s.inline and balanced(s)
    assert on_workers.peak <= 2, "never more than max_workers on the pool"
    assert on_producers.peak <= 4, "overflow runs only on the producers' own threads"


def test_o2_overflow_inline_runs_on_the_callers_thread(harness: Harness) -> None:
    offload = harness.pool(max_workers=1, max_pending=2)
    gate, started = harness.gate(), threading.Event()
    assert offload.register(OffloadKey.auto("running"), blocker(gate, started))
    assert started.wait(WAIT)
    assert offload.register(OffloadKey.auto("queued"), blocker(gate))
    assert offload.register(OffloadKey.auto("queued"), blocker(gate))
    assert offload.stats().pending == 2

    seen: list[int] = []
    assert offload.register(OffloadKey.auto("overflow"), lambda: seen.append(threading.get_ident()))
    assert seen == [threading.get_ident()], "ran at once, on this thread"
    s = offload.stats()
    assert (s.inline, s.completed, s.pending, s.running) == (1, 1, 2, 1) and balanced(s)

    gate.set()
    assert offload.drain(WAIT)
    assert offload.stats().completed == 4


def test_o2_overflow_reject_refuses_and_counts(harness: Harness) -> None:
    offload = harness.pool(max_workers=1, max_pending=1, overflow="reject")
    gate, started = harness.gate(), threading.Event()
    assert offload.register(OffloadKey.auto("running"), blocker(gate, started))
    assert started.wait(WAIT)
    assert offload.register(OffloadKey.auto("queued"), blocker(gate))
    ran: list[int] = []
    assert not offload.register(OffloadKey.auto("overflow"), lambda: ran.append(1))
    key = OffloadKey.keyed("user:1", "refresh")
    assert not offload.register(key, lambda: ran.append(2))
    s = offload.stats()
    assert (s.rejected, s.pending, s.inline) == (2, 1, 0) and balanced(s)

    gate.set()
    assert offload.drain(WAIT)
    assert ran == []
    assert offload.register(key, lambda: ran.append(3)), "a rejected key is not held"
    assert offload.drain(WAIT) and ran == [3]


def test_o2_max_pending_zero_never_queues(harness: Harness) -> None:
    offload = harness.pool(max_workers=2, max_pending=0)
    seen: list[int] = []
    assert offload.register(OffloadKey.auto("w"), lambda: seen.append(threading.get_ident()))
    assert seen == [threading.get_ident()]
    assert offload.stats().inline == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": True}, "max_workers"),
        ({"max_workers": 1.5}, "max_workers"),
        ({"max_pending": -1}, "max_pending"),
        ({"overflow": "drop-oldest"}, "overflow"),
    ],
)
def test_o2_arguments_are_validated(kwargs: dict[str, t.Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ThreadPoolOffload(**kwargs)


def test_pool_is_created_lazily_with_named_non_daemon_workers(harness: Harness) -> None:
    offload = harness.pool(max_workers=1, thread_name_prefix="offload-test")
    assert not [th for th in threading.enumerate() if th.name.startswith("offload-test")]
    workers: list[threading.Thread] = []
    assert offload.register(
        OffloadKey.auto("w"), lambda: workers.append(threading.current_thread())
    )
    assert offload.drain(WAIT)
    assert workers[0].name.startswith("offload-test") and not workers[0].daemon


# -- O3: shutdown and drain ------------------------------------------------------------------------


def test_o3_close_wait_finishes_every_accepted_task(harness: Harness) -> None:
    offload = harness.pool(max_workers=2, max_pending=50)
    gate = harness.gate()
    done: list[int] = []

    def task(i: int) -> t.Callable[[], None]:
        def run() -> None:
            assert gate.wait(WAIT)
            done.append(i)

        return run

    for i in range(20):
        assert offload.register(OffloadKey.auto("w"), task(i))
    closed = threading.Event()
    closer = threading.Thread(target=then_set(closed, offload.close))
    closer.start()
    try:
        # Sound whatever the timing: close() cannot return while the tasks are held.
        assert not closed.wait(0.05)
    finally:
        gate.set()
        closer.join(WAIT)
    assert closed.is_set()
    assert sorted(done) == list(range(20))
    s = offload.stats()
    assert (s.completed, s.active) == (20, 0) and balanced(s)


@pytest.mark.parametrize("make", [ThreadPoolOffload, InlineOffload, DisabledOffload])
def test_o3_register_and_adopt_after_close_raise(make: t.Callable[[], Offload]) -> None:
    offload = make()
    offload.close()
    before = offload.stats()
    with pytest.raises(OffloadError, match="offload is closed"):
        offload.register(OffloadKey.auto("late"), noop)
    with pytest.raises(OffloadError, match="offload is closed"):
        offload.adopt(OffloadKey.auto("late"), Future())
    assert offload.stats() == before, "a refused call counts nothing"
    assert offload.closed
    offload.close()
    offload.close(wait=False)


def test_o3_drain_times_out_without_losing_anything(harness: Harness) -> None:
    offload = harness.pool(max_workers=1)
    gate = harness.gate()
    done: list[str] = []

    def slow() -> None:
        assert gate.wait(WAIT)
        done.append("a")

    assert offload.register(OffloadKey.auto("slow"), slow)
    assert offload.register(OffloadKey.auto("queued"), lambda: done.append("b"))
    assert offload.drain(timeout=0.01) is False
    assert offload.stats().active == 2
    gate.set()
    assert offload.drain(WAIT) is True
    assert done == ["a", "b"]
    s = offload.stats()
    assert (s.completed, s.cancelled, s.active) == (2, 0, 0)


def test_o3_drain_and_close_inside_a_task_refuse_to_wait_for_themselves(harness: Harness) -> None:
    offload = harness.pool(max_workers=1)
    errors: list[BaseException] = []

    def task() -> None:
        for call in (offload.drain, lambda: offload.close(wait=True)):
            try:
                call()
            except RuntimeError as exc:
                errors.append(exc)

    assert offload.register(OffloadKey.auto("selfish"), task)
    assert offload.drain(WAIT)
    assert [type(e) for e in errors] == [RuntimeError, RuntimeError]
    assert not offload.closed
    assert offload.stats().completed == 1


def test_o3_context_manager_closes_with_wait() -> None:
    done: list[int] = []
    with ThreadPoolOffload(max_workers=2) as offload:
        for i in range(10):
            offload.register(OffloadKey.auto("w"), lambda i=i: done.append(i))  # type: ignore[misc]
    assert offload.closed and sorted(done) == list(range(10))


# -- O4: accounting, errors, adopt -----------------------------------------------------------------


@pytest.mark.parametrize("overflow", ["inline", "reject"])
def test_o4_accounting_adds_up_at_every_observation(harness: Harness, overflow: str) -> None:
    offload = harness.pool(
        max_workers=3, max_pending=4, overflow=overflow, on_error=lambda k, e: None
    )
    stop = threading.Event()
    problems: list[OffloadStats] = []
    samples = [0]

    def sample() -> None:
        while True:
            s = offload.stats()
            samples[0] += 1
            if not balanced(s) or s.running > 3 or s.pending > 4 or min(dataclasses.astuple(s)) < 0:
                problems.append(s)
            if stop.is_set():
                return

    def fail() -> None:
        raise ValueError("task failed")

    def produce(i: int) -> None:
        for j in range(50):
            key = OffloadKey.keyed(f"k{j % 3}", "refresh") if j % 2 else OffloadKey.auto("loser")
            offload.register(key, fail if j % 7 == 0 else lambda: sum(range(500)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        in_threads(4, produce)
        assert offload.drain(WAIT)
    finally:
        stop.set()
        sampler.join(WAIT)
    assert problems == [] and samples[0] > 1
    s = offload.stats()
    assert s.submitted == 200 and s.active == 0 and s.failed > 0 and balanced(s)


def test_o4_task_errors_are_logged_counted_reported_and_survived(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    reported: list[tuple[OffloadKey, BaseException]] = []
    offload = harness.pool(max_workers=1, on_error=lambda k, e: reported.append((k, e)))
    boom = ValueError("write to l2 failed")
    key = OffloadKey.keyed("user:1", "race_write_l2_loser")
    threads: list[int] = []

    def fail() -> None:
        threads.append(threading.get_ident())
        raise boom

    with caplog.at_level(logging.WARNING, logger="tieredcache.offload"):
        assert offload.register(key, fail)
        assert offload.drain(WAIT)
    assert reported == [(key, boom)]
    [record] = [r for r in caplog.records if r.name == "tieredcache.offload"]
    assert record.levelno == logging.WARNING and repr(key) in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is boom

    # The same (only) worker carries on with later tasks.
    assert offload.register(key, lambda: threads.append(threading.get_ident()))
    assert offload.drain(WAIT)
    assert len(threads) == 2 and threads[0] == threads[1]
    s = offload.stats()
    assert (s.failed, s.completed) == (1, 1) and balanced(s)


def test_o4_on_error_failure_is_logged_and_swallowed(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(key: OffloadKey, exc: BaseException) -> None:
        raise RuntimeError("hook broke")

    offload = harness.pool(max_workers=1, on_error=bad_hook)
    with caplog.at_level(logging.WARNING, logger="tieredcache.offload"):
        assert offload.register(OffloadKey.auto("w"), lambda: 1 / 0)
        assert offload.drain(WAIT)
    messages = [r.getMessage() for r in caplog.records if r.name == "tieredcache.offload"]
    assert len(messages) == 2 and "on_error" in messages[1]
    assert offload.stats().failed == 1
    ran = threading.Event()
    assert offload.register(OffloadKey.auto("w"), ran.set)
    assert offload.drain(WAIT) and ran.is_set()


@pytest.mark.parametrize("outcome", ["ok", "error"])
def test_o4_adopted_future_is_counted_and_drained(
    harness: Harness, caplog: pytest.LogCaptureFixture, outcome: str
) -> None:
    reported: list[BaseException] = []
    offload = harness.pool(on_error=lambda k, e: reported.append(e))
    gate = harness.gate()

    def leg() -> str:
        assert gate.wait(WAIT)
        if outcome == "error":
            raise ConnectionError("l2 down")
        return "stored"

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="io-test") as io:
        future = io.submit(leg)
        key = OffloadKey.auto("race_write_l2_loser")
        assert offload.adopt(key, future)
        s = offload.stats()
        assert (s.adopted, s.external, s.active, s.submitted) == (1, 1, 1, 1) and balanced(s)
        assert offload.drain(timeout=0.01) is False
        # No thread of the offload waits for the other pool's future: it has no pool at all.
        # (Other offloads of the process, such as the default one, may have workers.)
        assert offload._executor is None
        with caplog.at_level(logging.WARNING, logger="tieredcache.offload"):
            gate.set()
            assert offload.drain(WAIT)
    s = offload.stats()
    if outcome == "ok":
        assert (s.completed, s.failed) == (1, 0) and reported == []
    else:
        assert (s.completed, s.failed) == (0, 1) and isinstance(reported[0], ConnectionError)
        assert any(r.exc_info and r.exc_info[1] is reported[0] for r in caplog.records)
    assert s.active == 0 and balanced(s)


def test_o4_adopt_of_a_finished_future_settles_at_once(harness: Harness) -> None:
    offload = harness.pool()
    future: Future[int] = Future()
    future.set_result(1)
    assert offload.adopt(OffloadKey.auto("loser"), future)
    s = offload.stats()
    assert (s.completed, s.active, s.adopted) == (1, 0, 1) and balanced(s)


def test_o4_close_wait_waits_for_adopted_futures(harness: Harness) -> None:
    offload = harness.pool()
    future: Future[None] = Future()
    assert offload.adopt(OffloadKey.auto("loser"), future)
    closed = threading.Event()
    closer = threading.Thread(target=then_set(closed, offload.close))
    closer.start()
    try:
        assert not closed.wait(0.05)
    finally:
        future.set_result(None)
        closer.join(WAIT)
    assert closed.is_set() and offload.stats().completed == 1


def test_repr_shows_the_counts(harness: Harness) -> None:
    offload = harness.pool(max_workers=3)
    offload.register(OffloadKey.auto("w"), noop)
    assert offload.drain(WAIT)
    text = repr(offload)
    assert "ThreadPoolOffload" in text and "max_workers=3" in text and "completed=1" in text


# -- InlineOffload and DisabledOffload -------------------------------------------------------------


def test_inline_offload_runs_on_the_callers_thread(caplog: pytest.LogCaptureFixture) -> None:
    reported: list[BaseException] = []
    offload = InlineOffload(on_error=lambda k, e: reported.append(e))
    assert offload.runs_tasks
    seen: list[int] = []
    assert offload.register(OffloadKey.auto("w"), lambda: seen.append(threading.get_ident()))
    assert seen == [threading.get_ident()]
    with caplog.at_level(logging.WARNING, logger="tieredcache.offload"):
        assert offload.register(OffloadKey.auto("w"), lambda: 1 / 0), "errors are not raised"
    assert isinstance(reported[0], ZeroDivisionError) and caplog.records
    s = offload.stats()
    assert (s.completed, s.failed, s.inline, s.active) == (1, 1, 2, 0) and balanced(s)
    assert offload.drain(0)
    offload.close()


def test_inline_offload_deduplicates_across_threads() -> None:
    offload = InlineOffload()
    key = OffloadKey.keyed("user:1", "refresh")
    gate, started = threading.Event(), threading.Event()
    holder = threading.Thread(target=offload.register, args=(key, blocker(gate, started)))
    holder.start()
    try:
        assert started.wait(WAIT)
        assert not offload.register(key, noop)
        assert offload.drain(timeout=0.01) is False
        s = offload.stats()
        assert (s.deduplicated, s.running) == (1, 1) and balanced(s)
    finally:
        gate.set()
        holder.join(WAIT)
    assert offload.drain(WAIT)
    assert offload.register(key, noop)
    offload.close()


def test_inline_offload_drain_inside_a_task_raises() -> None:
    offload = InlineOffload()
    errors: list[BaseException] = []

    def task() -> None:
        try:
            offload.drain()
        except RuntimeError as exc:
            errors.append(exc)

    assert offload.register(OffloadKey.auto("w"), task)
    assert len(errors) == 1


def test_inline_offload_adopt_waits_for_the_future() -> None:
    offload = InlineOffload()
    future: Future[None] = Future()
    adopted = threading.Event()
    adopter = threading.Thread(
        target=then_set(adopted, lambda: offload.adopt(OffloadKey.auto("loser"), future))
    )
    adopter.start()
    try:
        assert not adopted.wait(0.05)
    finally:
        future.set_exception(ConnectionError("l2 down"))
        adopter.join(WAIT)
    assert adopted.is_set()
    s = offload.stats()
    assert (s.adopted, s.failed, s.active) == (1, 1, 0) and balanced(s)


def test_disabled_offload_drops_everything() -> None:
    offload = DisabledOffload()
    assert not offload.runs_tasks
    assert "dropped" in (DisabledOffload.__doc__ or "")
    ran: list[int] = []
    assert not offload.register(OffloadKey.auto("loser"), lambda: ran.append(1))
    assert not offload.register(OffloadKey.keyed("k", "refresh"), lambda: ran.append(2))

    waiting: Future[None] = Future()
    assert not offload.adopt(OffloadKey.auto("loser"), waiting)
    assert waiting.cancelled(), "a future that has not started is cancelled"

    running: Future[None] = Future()
    assert running.set_running_or_notify_cancel()
    assert not offload.adopt(OffloadKey.auto("loser"), running)
    assert not running.cancelled(), "a running future is left alone"
    running.set_result(None)

    s = offload.stats()
    assert ran == [] and (s.submitted, s.rejected, s.active) == (4, 4, 0) and balanced(s)
    assert offload.drain(0)
    offload.close()


def test_runs_tasks_flags_and_base_protocol() -> None:
    assert ThreadPoolOffload.runs_tasks and InlineOffload.runs_tasks
    assert not DisabledOffload.runs_tasks
    base = Offload()
    with pytest.raises(NotImplementedError):
        base.register(OffloadKey.auto("w"), noop)
    with pytest.raises(NotImplementedError):
        base.adopt(OffloadKey.auto("w"), Future())
    with pytest.raises(NotImplementedError):
        base.drain()
    with pytest.raises(NotImplementedError):
        base.close()
    with pytest.raises(NotImplementedError):
        base.stats()


# -- the process-wide offload, exit and fork -------------------------------------------------------


def test_default_offload_is_one_lazily_created_pool() -> None:
    previous = set_default_offload(None)
    try:
        pools = in_threads(8, lambda i: default_offload())
        assert all(pool is pools[0] for pool in pools)
        assert isinstance(pools[0], ThreadPoolOffload)
        assert (pools[0].max_workers, pools[0].max_pending) == (4, 10_000)
        mine = ThreadPoolOffload(max_workers=1)
        assert set_default_offload(mine) is pools[0]
        assert default_offload() is mine
        pools[0].close()
        mine.close()
    finally:
        set_default_offload(previous)


def run_script(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )


def test_accepted_tasks_complete_at_interpreter_exit(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out.txt"
    code = """
        import atexit
        import sys
        import threading

        from tieredcache.offload import OffloadKey
        from tieredcache.offload import default_offload

        path = sys.argv[1]

        def write(line):
            with open(path, "a") as f:
                f.write(line + "\\n")

        def second():
            inline = default_offload().stats().inline
            write("second %s inline=%d" % (threading.current_thread().name, inline))

        def first():
            write("first %d" % sum(i * i for i in range(200_000)))
            # A follow-up registered while the interpreter is already exiting still runs.
            default_offload().register(OffloadKey.auto("second"), second)

        def late():
            # atexit hooks run after concurrent.futures stopped taking work: runs inline.
            default_offload().register(
                OffloadKey.auto("late"), lambda: write("late " + threading.current_thread().name)
            )

        atexit.register(late)
        assert default_offload().register(OffloadKey.auto("first"), first)
        # no drain(), no close(): the script just ends
    """
    result = run_script(code, str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = out.read_text().splitlines()
    total = sum(i * i for i in range(200_000))
    assert lines[0] == f"first {total}"
    # On a worker, not inline: the exit drain ran while the pool still took work.
    assert lines[1].startswith("second tieredcache-offload") and lines[1].endswith("inline=0")
    assert lines[2] == "late MainThread"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_working_offload() -> None:
    code = """
        import os
        import sys
        import threading
        import warnings

        # Python 3.12+ warns about forking a threaded process; that is the point here.
        warnings.simplefilter("ignore", DeprecationWarning)

        from tieredcache.offload import OffloadKey
        from tieredcache.offload import ThreadPoolOffload

        offload = ThreadPoolOffload(max_workers=2)
        gate, started = threading.Event(), threading.Event()
        key = OffloadKey.keyed("user:1", "refresh")

        def held():
            started.set()
            gate.wait(30)

        assert offload.register(key, held)
        assert started.wait(30)
        pid = os.fork()
        if pid == 0:
            s = offload.stats()
            ok = (s.submitted, s.cancelled, s.active) == (1, 1, 0)
            ran = threading.Event()
            ok = ok and offload.register(key, ran.set)  # the key is free in the child
            ok = ok and offload.drain(30) and ran.is_set()
            offload.close()
            print(offload.stats(), flush=True)
            os._exit(0 if ok else 1)
        gate.set()
        _, status = os.waitpid(pid, 0)
        offload.close()
        s = offload.stats()
        assert (s.completed, s.cancelled, s.active) == (1, 0, 0), s
        sys.exit(os.waitstatus_to_exitcode(status))
    """
    result = run_script(code)
    assert result.returncode == 0, result.stdout + result.stderr
