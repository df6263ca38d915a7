"""Races around the per-key ordering: a read that overlaps a write never refills L1 with
what it read before the write landed (one key and a batch), and a fork while another thread
holds one of the ordering's module locks does not hang the child."""

from __future__ import annotations

import threading
import typing as t

import pytest

from tieredcache import MemoryBackend
from tieredcache import TieredCache
from tieredcache.entry import Entry
from tieredcache.testing.faults import FaultyBackend


class PausesAfterRead(FaultyBackend):
    """Reads from the inner store, then waits for :attr:`resume` (once :attr:`armed`)."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner, "l2")
        self.armed = False
        self.read_done = threading.Event()
        self.resume = threading.Event()

    def _pause(self) -> None:
        if self.armed:
            self.armed = False
            self.read_done.set()
            assert self.resume.wait(10)

    def get_entry(self, key: str) -> Entry | None:
        entry = super().get_entry(key)
        self._pause()
        return entry

    def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]:
        found = super().get_entries(keys)
        self._pause()
        return found


@pytest.mark.parametrize("keys", [["k"], ["k", "j"]])
def test_a_read_that_began_during_a_write_does_not_refill_the_old_value(keys: list[str]) -> None:
    l1 = FaultyBackend(MemoryBackend(), "l1")
    l2 = PausesAfterRead(MemoryBackend())
    cache = TieredCache(l1, l2)
    try:
        cache.set_many({key: "old" for key in keys})
        l1.inner.clear()
        gate = l1.hold("set")
        writer = threading.Thread(target=cache.set_many, args=({key: "new" for key in keys},))
        writer.start()
        assert l1.entered["set"].wait(10)  # the write began; its L1 leg waits
        l2.armed = True
        found: dict[str, t.Any] = {}
        reader = threading.Thread(target=lambda: found.update(cache.get_many(keys)))
        reader.start()
        assert l2.read_done.wait(10)  # the read has L2's old values in hand
        assert found == {}
        gate.set()
        l1.release()
        writer.join(10)  # the write landed in both layers and ended
        assert not writer.is_alive()
        l2.resume.set()
        reader.join(10)
        assert not reader.is_alive()
        assert found == {key: "old" for key in keys}  # it read before the write landed
        # ... but it did not put that into L1 over the write.
        assert cache.l1.get_many(keys) == {key: "new" for key in keys}
        assert cache.get_many(keys) == {key: "new" for key in keys}
    finally:
        cache.close()


def test_a_fork_while_a_thread_makes_key_locks_or_versions_does_not_hang_the_child() -> None:
    import os
    import select

    from tieredcache import entry
    from tieredcache.tiered import ordering

    cache = TieredCache(MemoryBackend(), MemoryBackend())
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:  # parked inside both locks, as a thread may be for a moment
        with ordering._LOCKS_MADE, entry._version_lock:
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - reports through the pipe
            try:
                os.close(read)
                cache.set("k", 1)
                os.write(write, b"ok" if cache.get("k") == 1 else b"bad")
            finally:
                os._exit(0)
        os.close(write)
        try:
            ready, _, _ = select.select([read], [], [], 10)
            assert ready, "the forked child hung"
            assert os.read(read, 16) == b"ok"
        finally:
            os.close(read)
            os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join(10)
        cache.close()
