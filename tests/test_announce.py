"""The announcement queue and the worker that sends it: batching, the linger, steps that
join, failures that requeue; and the worker's wait for due work and its keep-alive."""

from __future__ import annotations

import threading
import typing as t

from tieredcache.backplane import Backplane
from tieredcache.tiered.announce import ANNOUNCE_BATCH
from tieredcache.tiered.announce import Announcements
from tieredcache.tiered.worker import RetryWorker


class Recorder(Backplane):
    """Records what is published; fails while ``failing``."""

    carries_entries = True

    def __init__(self) -> None:
        self.sent: list[dict[str, t.Any]] = []
        self.failing = False

    def publish(
        self,
        kind: str,
        keys: t.Sequence[str],
        version: int = 0,
        *,
        entries: t.Mapping[str, bytes] | None = None,
        previous: t.Mapping[str, int | None] | None = None,
    ) -> bool:
        if self.failing:
            return False
        self.sent.append(
            {
                "kind": kind,
                "keys": list(keys),
                "version": version,
                "entries": dict(entries or {}),
                "previous": dict(previous or {}),
            }
        )
        return True


def test_writes_of_one_linger_go_out_in_one_message_per_kind() -> None:
    queue = Announcements(linger=10.0)
    queue.add_updates({"a": (b"A", 11, 10)}, 1)
    queue.add_updates({"b": (b"B", 21, None)}, 2)
    queue.add("delete", ["c"], 3)
    assert len(queue) == 3
    assert 9.0 < queue.due() <= 10.0  # the oldest waits for its linger
    plane = Recorder()
    assert queue.send(plane)
    assert not queue
    assert plane.sent == [
        {
            "kind": "set",
            "keys": ["a", "b"],
            "version": 2,
            "entries": {"a": b"A", "b": b"B"},
            "previous": {"a": 10, "b": None},
        },
        {"kind": "delete", "keys": ["c"], "version": 3, "entries": {}, "previous": {}},
    ]


def test_a_clear_or_a_full_batch_is_due_at_once() -> None:
    queue = Announcements(linger=10.0)
    queue.add("clear", [], 1)
    assert queue.due() == 0.0
    queue = Announcements(linger=10.0)
    queue.add("delete", [f"k{i}" for i in range(ANNOUNCE_BATCH)], 1)
    assert queue.due() == 0.0


def test_two_writes_of_a_key_in_a_row_are_one_step() -> None:
    queue = Announcements()
    queue.add_updates({"k": (b"1", 1, 0)}, 1)
    queue.add_updates({"k": (b"2", 2, 1)}, 2)  # replaced our own queued write
    plane = Recorder()
    queue.send(plane)
    assert plane.sent[0]["entries"] == {"k": b"2"}
    assert plane.sent[0]["previous"] == {"k": 0}  # from what the first write replaced


def test_a_write_over_another_process_s_entry_keeps_its_own_step() -> None:
    queue = Announcements()
    queue.add_updates({"k": (b"1", 1, 0)}, 1)
    queue.add_updates({"k": (b"3", 3, 2)}, 2)  # another process wrote 2 in between
    plane = Recorder()
    queue.send(plane)
    assert plane.sent[0]["previous"] == {"k": 2}


def test_a_failed_send_is_queued_again_behind_nothing_newer() -> None:
    queue = Announcements()
    queue.add_updates({"k": (b"1", 1, 0)}, 1)
    plane = Recorder()
    plane.failing = True
    assert not queue.send(plane)
    assert queue.errors == 1 and len(queue) == 1
    assert queue.due() == 0.0
    queue.add("delete", ["k"], 2)  # newer than the failed one
    plane.failing = False
    assert queue.send(plane)
    assert [m["kind"] for m in plane.sent] == ["delete"]


def test_entries_are_split_by_size() -> None:
    queue = Announcements()
    big = b"x" * 1000
    queue.add_updates({f"k{i}": (big, i + 1, None) for i in range(200)}, 1)
    plane = Recorder()
    queue.send(plane)
    assert len(plane.sent) > 1
    assert sum(len(m["keys"]) for m in plane.sent) == 200
    assert all(sum(map(len, m["entries"].values())) <= 64 * 1024 for m in plane.sent)


def test_the_worker_waits_for_due_work_and_wake_cuts_it_short() -> None:
    queued = threading.Event()
    done = threading.Event()

    def attempt() -> bool:
        queued.clear()
        done.set()
        return True

    worker = RetryWorker("test-worker", queued.is_set, attempt, due=lambda: 60.0)
    try:
        queued.set()
        worker.ensure()
        assert not done.wait(0.2)  # due in a minute: not done yet
        worker.wake()
        assert done.wait(5)
        assert worker.wait_idle(5)
    finally:
        worker.stop(5)
    assert worker.thread is None or not worker.thread.is_alive()


def test_the_worker_keeps_its_thread_for_more_work_then_stops() -> None:
    work: list[int] = []
    lock = threading.Lock()
    ran = threading.Semaphore(0)

    def pending() -> bool:
        with lock:
            return bool(work)

    def attempt() -> bool:
        with lock:
            work.clear()
        ran.release()
        return True

    worker = RetryWorker("test-keep", pending, attempt, keep_alive=60.0)
    try:
        with lock:
            work.append(1)
        worker.ensure()
        assert ran.acquire(timeout=5)
        first = worker.thread
        assert worker.wait_idle(5)
        with lock:
            work.append(2)
        worker.ensure()  # the idle thread takes it
        assert ran.acquire(timeout=5)
        assert worker.thread is first
    finally:
        worker.stop(5)
    assert first is not None and not first.is_alive()


def test_compositions_over_a_faulty_store_update_each_other_in_place() -> None:
    from tieredcache import MemoryBackend
    from tieredcache import TieredCache
    from tieredcache.testing.backplane import LocalBackplaneHub
    from tieredcache.testing.faults import FaultyBackend

    hub = LocalBackplaneHub()
    store = MemoryBackend()
    a, b = (
        TieredCache(MemoryBackend(), FaultyBackend(store), backplane=hub.new()) for _ in range(2)
    )
    try:
        for cache in (a, b):
            cache.gate.background = False
        a.set("k", 1)
        a.gate.send_announcements()
        hub.deliver()  # b does not hold k: ignored
        assert b.get("k") == 1  # b holds it now
        a.set("k", 2)
        a.set("k", 3)  # both writes go out as one step, from 1 to 3
        a.gate.send_announcements()
        assert hub.deliver() == 1
        l2_hits = b.stats()["l2_hits"]
        assert b.get("k") == 3
        assert b.stats()["l2_hits"] == l2_hits  # updated in place, not evicted
    finally:
        a.close()
        b.close()


def test_the_held_version_is_read_without_counting_a_read() -> None:
    from tieredcache import MemoryBackend
    from tieredcache.entry import Entry
    from tieredcache.testing.clock import FakeClock

    clock = FakeClock(1000.0)
    l1 = MemoryBackend(timer=clock)
    l1.set_entry("k", Entry("v", 1001.0, 7))
    before = l1.stats()
    assert l1.held_version("k") == 7
    assert l1.held_version("other") is None
    after = l1.stats()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    clock.advance(1.0)
    assert l1.held_version("k") is None  # expired


def test_a_write_whose_reply_was_lost_is_announced_once_l2_answers() -> None:
    import pytest

    from tieredcache import MemoryBackend
    from tieredcache import TieredCache
    from tieredcache.entry import Entry
    from tieredcache.errors import BackendTimeoutError
    from tieredcache.testing.backplane import LocalBackplaneHub
    from tieredcache.testing.faults import FaultyBackend

    class LosesReplies(FaultyBackend):
        """Writes land; the first reply is lost (a timeout after the server applied it)."""

        lose = True

        def swap_entries(self, items: t.Mapping[str, Entry]) -> dict[str, tuple[bytes, int | None]]:
            swapped = super().swap_entries(items)
            if self.lose:
                self.lose = False
                raise BackendTimeoutError("the reply was lost", backend="l2")
            return swapped

    hub = LocalBackplaneHub()
    store = MemoryBackend()
    a = TieredCache(MemoryBackend(), LosesReplies(store), backplane=hub.new(), fail_open=False)
    b = TieredCache(MemoryBackend(), FaultyBackend(store), backplane=hub.new(), fail_open=False)
    try:
        b.set("k", "old")
        b.wait_idle(5)
        hub.deliver()
        assert a.get("k") == "old" and b.get("k") == "old"
        with pytest.raises(BackendTimeoutError):
            a.set("k", "new")  # it landed, but a could not know
        assert a.wait_idle(5)  # the worker saw L2 answer, then announced the key
        hub.deliver()
        assert b.l1.get("k") is None  # evicted: b reads L2's value again
        assert b.get("k") == "new"
    finally:
        a.close()
        b.close()
