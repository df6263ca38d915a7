"""The L1 hit reader: a composition over a MemoryBackend answers an L1 hit in one call, and
answers everything else (misses, expiry, tags, bad keys) exactly as the ordinary read path."""

from __future__ import annotations

import os
import threading
import typing as t

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tieredcache import InvalidKeyError
from tieredcache import MemoryBackend
from tieredcache import TieredCache
from tieredcache.entry import Entry
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.fork import report_from_child

PATIENCE = 10.0


class PlainReads(MemoryBackend):
    """A MemoryBackend whose composition reads through get_entry (no hit reader)."""

    def hit_reader(self, count: t.Any, otherwise: t.Any, missed: t.Any = None) -> None:
        return None


def _pair(clock: FakeClock, policy: str = "lru") -> tuple[TieredCache, TieredCache]:
    fast = TieredCache(MemoryBackend(8, policy=policy, timer=clock), MemoryBackend(64, timer=clock))
    plain = TieredCache(PlainReads(8, policy=policy, timer=clock), MemoryBackend(64, timer=clock))
    return fast, plain


def test_an_l1_hit_is_the_reader_and_counts_as_before() -> None:
    clock = FakeClock()
    fast, plain = _pair(clock)
    assert "get" in vars(fast) and "get" not in vars(plain)
    for cache in (fast, plain):
        cache.set("k", "v", ttl=10)
        assert cache.get("k") == "v"
        assert cache.get("absent", "d") == "d"
    assert fast.stats() == plain.stats()
    assert fast.l1.stats() == plain.l1.stats()
    assert fast.stats()["l1_hits"] == 1


def test_an_l1_hit_counts_as_recent_use() -> None:
    clock = FakeClock()
    fast = TieredCache(MemoryBackend(3, timer=clock), MemoryBackend(8, timer=clock))
    for key in "abc":
        fast.set(key, key)
    assert fast.get("a") == "a"  # a is now the most recently used
    fast.set("d", "d")  # evicts the least recently used from L1: b
    assert sorted(fast.l1.iter_keys()) == ["a", "c", "d"]


def test_an_expired_l1_entry_is_not_served() -> None:
    clock = FakeClock()
    fast = TieredCache(MemoryBackend(8, timer=clock), MemoryBackend(8, timer=clock), l1_ttl=1)
    fast.set("k", "v", ttl=10)
    fast.l2.set("k", "newer", ttl=10)
    clock.advance(2)  # L1's copy has expired; L2's has not
    assert fast.get("k") == "newer"
    assert fast.stats()["l2_hits"] == 1


def test_bad_keys_raise_as_before() -> None:
    fast, _ = _pair(FakeClock())
    with pytest.raises(InvalidKeyError):
        fast.get(b"k")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        fast.get(["unhashable"])  # type: ignore[arg-type]


def test_a_subclass_get_and_an_l1_subclass_reading_its_own_way_are_kept() -> None:
    class Counted(TieredCache):
        calls = 0

        def get(self, key: str, default: t.Any = None) -> t.Any:
            Counted.calls += 1
            return super().get(key, default)

    class OwnReads(MemoryBackend):
        def get_entry(self, key: str) -> Entry | None:
            return super().get_entry(key)

    counted = Counted(MemoryBackend(8), MemoryBackend(8))
    counted.set("k", 1)
    assert counted.get("k") == 1 and Counted.calls == 1
    own = TieredCache(OwnReads(8), MemoryBackend(8))
    assert "get" not in vars(own)
    serialized = TieredCache(MemoryBackend(8, serializer=_pickle()), MemoryBackend(8))
    assert "get" not in vars(serialized)


def _pickle() -> t.Any:
    from tieredcache import PickleSerializer

    return PickleSerializer()


def test_a_replaced_l1_clock_is_read_on_every_hit() -> None:
    clock = FakeClock()
    fast = TieredCache(MemoryBackend(8, timer=clock), MemoryBackend(8, timer=clock), l1_ttl=5)
    fast.set("k", "v", ttl=60)
    later = FakeClock(clock() + 10)
    fast.l1.timer = later
    fast.l2.delete("k")
    assert fast.get("k") is None  # expired by the new clock: not served from L1


_KEYS = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), _KEYS, st.integers(0, 3), st.sampled_from([(), ("t",)])),
        st.tuples(st.just("get"), _KEYS),
        st.tuples(st.just("delete"), _KEYS),
        st.tuples(st.just("advance"), st.floats(0, 2)),
        st.tuples(
            st.just("invalidate"),
        ),
        st.tuples(st.just("l2-drop"), _KEYS),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS, policy=st.sampled_from(["lru", "lfu", "fifo"]))
def test_reads_answer_as_the_ordinary_path(ops: list[tuple[t.Any, ...]], policy: str) -> None:
    """With and without the hit reader, every read returns the same and the counters agree."""
    clock = FakeClock()
    fast, plain = _pair(clock, policy)
    for op in ops:
        for cache in (fast, plain):
            kind = op[0]
            if kind == "set":
                cache.set(op[1], op[2], ttl=1 + op[2], tags=op[3])
            elif kind == "delete":
                cache.delete(op[1])
            elif kind == "invalidate":
                cache.invalidate_tags(["t"])
            elif kind == "l2-drop":
                cache.l2.delete(op[1])
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "get":
            assert fast.get(op[1], "default") == plain.get(op[1], "default")
    assert fast.stats() == plain.stats()
    assert fast.l1.stats() == plain.l1.stats()
    assert sorted(fast.l1.iter_keys()) == sorted(plain.l1.iter_keys())


def test_compositions_that_come_and_go_keep_l1_counts_and_no_links() -> None:
    """One atomic count serves the L1's and the composition's hit counters; once a
    composition is gone its count is folded into the L1's totals and let go."""
    import gc

    l1 = MemoryBackend(8)
    for i in range(30):
        cache = TieredCache(l1, MemoryBackend(8))
        cache.set("k", i)
        assert cache.get("k") == i and cache.get("k") == i
        assert cache.stats()["l1_hits"] == 2
        del cache
        gc.collect()
    assert l1.stats()["hits"] == 60
    links = len(l1._counters._linked)  # its own incrementers, and the last reader's at most
    TieredCache(l1, MemoryBackend(8))
    gc.collect()
    TieredCache(l1, MemoryBackend(8))
    assert len(l1._counters._linked) <= links + 1
    l1.reset_stats()
    assert l1.stats()["hits"] == 0


def test_lru_keeps_a_hit_whose_replay_found_the_lock_taken() -> None:
    """A hit whose buffer replay is skipped (a writer holds the L1 lock at that moment)
    must still count as recent use once the lock is free."""
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(3, timer=clock), MemoryBackend(8, timer=clock))
    for key in "xyz":
        cache.set(key, key)
    l1 = cache.l1
    for _ in range(256):
        assert cache.get("z") == "z"
    with l1._lock:  # type: ignore[attr-defined]  # a concurrent write holds the lock
        assert cache.get("x") == "x"  # x is now more recent than y
    for _ in range(256):
        assert cache.get("z") == "z"
    cache.set("w", "w")  # evicts the least recently used: y
    assert sorted(l1.iter_keys()) == ["w", "x", "z"]


@pytest.mark.parametrize("path", ["get_many", "another composition"])
def test_lru_keeps_a_read_made_by_another_path_among_hits(path: str) -> None:
    """``x`` is read by another path than this composition's hit reader (a batch read, or a
    second composition over the same L1), then 256 hits of ``z`` follow through this one:
    the read of ``x`` still counts as recent use (one thread, no lock held anywhere)."""
    l1 = MemoryBackend(3)
    cache, other = TieredCache(l1, MemoryBackend(8)), TieredCache(l1, MemoryBackend(8))
    for key in "xyz":
        cache.set(key, key)
    assert cache.get("z") == "z"
    if path == "get_many":
        assert cache.get_many(["x"]) == {"x": "x"}  # x is now more recent than y
    else:
        assert other.get("x") == "x"
    for _ in range(256):
        assert cache.get("z") == "z"
    cache.set("w", "w")  # evicts the least recently used: y
    assert sorted(l1.iter_keys()) == ["w", "x", "z"]


def test_an_l1_clock_that_fails_is_an_l1_read_failure() -> None:
    clock = FakeClock()
    l1 = MemoryBackend(8, timer=clock)
    cache = TieredCache(l1, MemoryBackend(8, timer=clock))
    cache.set("k", "v", ttl=60)

    def broken() -> float:
        raise RuntimeError("no clock")

    l1.timer = broken
    assert cache.get("k") == "v"  # answered by L2, as any failed L1 read
    assert cache.stats()["l1_read_errors"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_during_another_threads_replay_keeps_recency_in_the_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another thread is replaying the read buffer (it holds the L1's lock) when the process
    # forks: that replay never ends in the child, whose own reads are still replayed.
    l1 = MemoryBackend(3)
    cache = TieredCache(l1, MemoryBackend(8))
    for key in "xyz":
        cache.set(key, key)
    replaying, finish = threading.Event(), threading.Event()
    order = l1._order
    replay = order.replay

    def held(reads: t.Any) -> None:
        replaying.set()
        finish.wait(PATIENCE)
        replay(reads)

    monkeypatch.setattr(order, "replay", held)
    reader = threading.Thread(target=lambda: [cache.get("z") for _ in range(300)])
    reader.start()
    try:
        assert replaying.wait(PATIENCE)

        def child() -> bytes:
            order.replay = replay  # the child's replays are not held
            assert cache.get("x") == "x"  # x is now more recent than y
            for _ in range(256):
                assert cache.get("z") == "z"
            cache.set("w", "w")  # evicts the least recently used: y
            return repr(sorted(l1.iter_keys())).encode()

        assert report_from_child(child, PATIENCE) == repr(["w", "x", "z"]).encode()
    finally:
        finish.set()
        reader.join(PATIENCE)
