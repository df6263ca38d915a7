"""TieredCache: configuration, the serialization rule, ordering scenarios and deadlock freedom.

The policies' promises under random operation sequences are checked by the state machines
in test_policies_stateful.py; these tests pin down specific scenarios deterministically.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import threading
import typing as t

import pytest

from tieredcache import BackendUnavailableError
from tieredcache import BothLayersFailed
from tieredcache import ConfigurationError
from tieredcache import DisabledOffload
from tieredcache import Entry
from tieredcache import InlineOffload
from tieredcache import LoserPolicy
from tieredcache import MemoryBackend
from tieredcache import NullBackend
from tieredcache import OffloadError
from tieredcache import OptimisticParallelWrite
from tieredcache import PickleSerializer
from tieredcache import RaceWrite
from tieredcache import Refill
from tieredcache import SerializationError
from tieredcache import SQLiteBackend
from tieredcache import ThreadPoolOffload
from tieredcache import TieredCache
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.contract import BackendContract
from tieredcache.testing.faults import FaultyBackend
from tieredcache.testing.faults import ManualExecutor

PATIENCE = 10.0


@pytest.fixture
def offload() -> t.Iterator[ThreadPoolOffload]:
    pool = ThreadPoolOffload(max_workers=2)
    yield pool
    pool.close(wait=True)


@pytest.fixture
def executor() -> t.Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=True)


class TestTieredCacheContract(BackendContract):
    """A composition is a backend: it keeps the whole contract itself."""

    @pytest.fixture(params=["memory+sqlite", "memory+memory-race"])
    def make_backend(
        self, request: pytest.FixtureRequest, tmp_path: t.Any, offload: ThreadPoolOffload
    ) -> t.Iterator[t.Callable[..., TieredCache]]:
        made: list[TieredCache] = []

        def factory(**options: t.Any) -> TieredCache:
            timer = options.get("timer")
            serializer = options.pop("serializer", None)
            if request.param == "memory+sqlite":
                l2 = SQLiteBackend(tmp_path / "l2.sqlite3", timer=timer, serializer=serializer)
                cache = TieredCache(MemoryBackend(1000, timer=timer), l2, **options)
            else:
                l2 = MemoryBackend(1000, timer=timer, serializer=serializer or PickleSerializer())
                cache = TieredCache(
                    MemoryBackend(1000, timer=timer),
                    l2,
                    write=RaceWrite(),
                    offload=InlineOffload(),
                    **options,
                )
            made.append(cache)
            return cache

        yield factory
        for cache in made:
            cache.close()

    @property
    def shared_store(self) -> bool:  # type: ignore[override]
        return False  # each composition has its own L1


# -- configuration --------------------------------------------------------------------------


def test_race_offload_refuses_an_offload_that_drops_tasks() -> None:
    with pytest.raises(ConfigurationError, match="drops them"):
        TieredCache(MemoryBackend(), MemoryBackend(), write=RaceWrite(), offload=DisabledOffload())
    # Dropping losers is allowed when asked for explicitly.
    TieredCache(
        MemoryBackend(),
        MemoryBackend(),
        write=RaceWrite(loser=LoserPolicy.DROP),
        offload=DisabledOffload(),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read": "sequential"},
        {"write": object()},
        {"refill": "always"},
        {"l1_ttl": 0},
        {"l1_ttl": "5"},
    ],
)
def test_bad_configuration(kwargs: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        TieredCache(MemoryBackend(), MemoryBackend(), **kwargs)


def test_layers_must_be_distinct_backends() -> None:
    layer = MemoryBackend()
    with pytest.raises(ConfigurationError):
        TieredCache(layer, layer)
    with pytest.raises(ConfigurationError):
        TieredCache(layer, {})  # type: ignore[arg-type]


# -- serialization happens before any layer is written ---------------------------------------


@pytest.mark.parametrize(
    "write", [None, OptimisticParallelWrite(), RaceWrite()], ids=["sequential", "parallel", "race"]
)
def test_unpicklable_value_leaves_every_tier_unchanged(
    write: t.Any, executor: concurrent.futures.Executor, offload: ThreadPoolOffload
) -> None:
    l1 = MemoryBackend()  # stores objects: it would accept anything
    l2 = MemoryBackend(serializer=PickleSerializer())
    cache = TieredCache(l1, l2, write=write, executor=executor, offload=offload)
    cache.set("k", "old")
    cache.drain()
    with pytest.raises(SerializationError):
        cache.set("k", threading.Lock())
    with pytest.raises(SerializationError):
        cache.set_many({"k": "new", "other": lambda: None})
    cache.drain()
    assert l1.get("k") == "old" and l2.get("k") == "old"
    assert l1.get("other") is None and l2.get("other") is None


# -- sequential write: the documented failure table ------------------------------------------


def test_sequential_l1_failure_never_calls_l2() -> None:
    l1, l2 = FaultyBackend(MemoryBackend(), "l1"), FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(l1, l2)
    l1.fail("set")
    with pytest.raises(BackendUnavailableError) as info:
        cache.set("k", 1)
    assert info.value.tier == "l1"
    assert l2.count("set") == 0
    cache._check_invariants()


def test_sequential_l2_failure_keeps_l1() -> None:
    l1, l2 = FaultyBackend(MemoryBackend(), "l1"), FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(l1, l2)
    l2.fail("set")
    with pytest.raises(BackendUnavailableError) as info:
        cache.set("k", 1)
    assert info.value.tier == "l2"
    assert l1.inner.get("k") == 1
    cache._check_invariants()


def test_both_layers_failed_keeps_both_causes_and_pickles(
    executor: concurrent.futures.Executor,
) -> None:
    l1, l2 = FaultyBackend(MemoryBackend(), "l1"), FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(l1, l2, write=OptimisticParallelWrite(), executor=executor)
    l1.fail(error=BackendUnavailableError("first", backend="l1"))
    l2.fail(error=BackendUnavailableError("second", backend="l2"))
    with pytest.raises(BothLayersFailed) as info:
        cache.set("k", 1)
    assert str(info.value.l1).endswith("first") and str(info.value.l2).endswith("second")
    assert (info.value.l1.tier, info.value.l2.tier) == ("l1", "l2")
    copy = pickle.loads(pickle.dumps(info.value))
    assert isinstance(copy, BothLayersFailed) and str(copy.l2).endswith("second")
    with pytest.raises(BothLayersFailed):
        cache.get("k")
    with pytest.raises(BothLayersFailed):
        cache.delete("k")


def test_partial_failure_is_reported_not_silent(executor: concurrent.futures.Executor) -> None:
    reports: list[tuple[str, list[str], BaseException]] = []
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(
        MemoryBackend(),
        l2,
        write=OptimisticParallelWrite(),
        executor=executor,
        on_partial_failure=lambda tier, keys, exc: reports.append((tier, keys, exc)),
    )
    l2.fail("set")
    cache.set("k", 1)
    assert cache.l1.get("k") == 1
    assert [(tier, keys) for tier, keys, _ in reports] == [("l2", ["k"])]
    assert cache.stats()["l2_write_errors"] == 1


def test_race_with_a_failing_local_l1_waits_for_l2_and_reports_l1(
    executor: concurrent.futures.Executor, offload: ThreadPoolOffload
) -> None:
    reports: list[tuple[str, list[str]]] = []
    l1 = FaultyBackend(MemoryBackend(), "l1")
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(
        l1,
        l2,
        write=RaceWrite(),
        executor=executor,
        offload=offload,
        on_partial_failure=lambda tier, keys, exc: reports.append((tier, keys)),
    )
    l1.fail("set")
    cache.set("k", 1)  # L1 lost: the call returns once L2 holds the value
    assert l2.inner.get("k") == 1 and l1.inner.get("k") is None
    assert reports == [("l1", ["k"])]
    l2.fail("set", error=BackendUnavailableError("down", backend="l2"))
    with pytest.raises(BothLayersFailed) as info:
        cache.set("k", 2)
    assert (info.value.l1.tier, info.value.l2.tier) == ("l1", "l2")
    assert l2.inner.get("k") == 1


def test_race_returns_when_local_l1_holds_the_value_and_l2_follows(
    executor: concurrent.futures.Executor, offload: ThreadPoolOffload
) -> None:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(MemoryBackend(), l2, write=RaceWrite(), executor=executor, offload=offload)
    gate = l2.hold("set")
    try:
        cache.set("k", 1)  # returns while the L2 leg waits at the gate
        assert cache.l1.get("k") == 1 and l2.inner.get("k") is None
        assert l2.entered["set"].wait(5)
    finally:
        gate.set()
        l2.release()
    assert cache.drain(5)
    assert l2.inner.get("k") == 1


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt / gevent.Timeout raised during the L1 write."""


class InterruptingL1(MemoryBackend):
    armed = False

    def set_entries(self, items: t.Mapping[str, t.Any]) -> None:
        if self.armed:
            self.armed = False
            raise Interrupt()
        super().set_entries(items)


def test_race_write_l1_interrupted_still_ends_the_l2_leg() -> None:
    """RaceWrite(OFFLOAD) with a local L1: a BaseException out of the L1 leg must not leave
    the L2 leg neither run nor discarded (the key's writer count would never go back to 0,
    and no read of the key would ever refill L1 again)."""
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        l1 = InterruptingL1(8)
        cache = TieredCache(l1, MemoryBackend(8), write=RaceWrite(), executor=executor)
        l1.armed = True
        with pytest.raises(Interrupt):
            cache.set("k", 1)
        assert cache.drain(5)
        cache.set("k", 2)
        assert cache.drain(5)
        l1.delete("k")
        assert cache.get("k") == 2  # an L2 hit ...
        assert l1.get("k") == 2, cache.stats()  # ... that refills L1


@pytest.mark.parametrize("l1_local", [True, False], ids=["local-l1", "remote-l1"])
def test_race_write_whose_l2_leg_is_cancelled_ends_it_and_reports_it(l1_local: bool) -> None:
    """The executor is shut down with cancel_futures=True while the L2 leg of a RaceWrite
    waits in its queue: the leg never runs, the key's write still ends (a later read
    refills L1), and the unwritten L2 is reported as a failure of that layer."""
    executor = ManualExecutor()
    reports: list[tuple[str, list[str], BaseException]] = []
    l1 = MemoryBackend(8)
    l1.local = l1_local  # type: ignore[misc]
    cache = TieredCache(
        l1,
        MemoryBackend(8),
        write=RaceWrite(),
        executor=executor,
        offload=ThreadPoolOffload(max_workers=1),
        on_partial_failure=lambda tier, keys, exc: reports.append((tier, keys, exc)),
    )
    try:
        if l1_local:
            cache.set("k", 1)  # L1 now; the L2 leg waits in the executor's queue
        else:
            writing = threading.Thread(target=cache.set, args=("k", 1))
            writing.start()
            assert wait_until(lambda: executor.pending == 2)
            executor.run(1)  # L1's leg (queued after L2's) wins the race
            writing.join(PATIENCE)
        executor.shutdown(cancel_futures=True)
        assert cache.drain(PATIENCE)
        assert cache.stats()["in_flight_keys"] == 0
        assert [(tier, keys) for tier, keys, _ in reports] == [("l2", ["k"])]
        assert isinstance(reports[0][2], OffloadError)
        assert cache.l2.get("k") is None
        cache.l2.set("k", 2)  # written elsewhere; L1 drops its copy
        cache.l1.delete("k")
        assert cache.get("k") == 2
        assert cache.l1.get("k") == 2  # refilled: the cancelled write ended
    finally:
        cache.close()


def test_parallel_write_with_a_local_l1_needs_no_worker() -> None:
    """OptimisticParallelWrite over an in-process L1 runs both legs on the caller's thread:
    an executor that never runs anything does not hold the write up, and a failing L2 is
    reported, not raised."""
    executor = ManualExecutor()
    reports: list[str] = []
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(
        MemoryBackend(),
        l2,
        write=OptimisticParallelWrite(),
        executor=executor,
        on_partial_failure=lambda tier, keys, exc: reports.append(tier),
    )
    cache.set("k", 1)
    assert cache.l1.get("k") == 1 and l2.inner.get("k") == 1 and executor.pending == 0
    l2.fail("set")
    cache.set("k", 2)
    assert cache.l1.get("k") == 2 and l2.inner.get("k") == 1 and reports == ["l2"]


# -- ordering: no resurrection, also for legs already in flight -------------------------------


def _race_cache(executor: concurrent.futures.Executor, offload: t.Any) -> TieredCache:
    return TieredCache(
        MemoryBackend(), MemoryBackend(), write=RaceWrite(), executor=executor, offload=offload
    )


def test_late_loser_never_overwrites_a_newer_value(offload: ThreadPoolOffload) -> None:
    manual = ManualExecutor()
    cache = _race_cache(manual, offload)
    cache.set("k", "v1")
    cache.set("k", "v2")
    assert manual.pending == 2
    manual.run(1)  # v2's L2 leg lands first
    manual.run(0)  # then v1's, late: it must be skipped
    assert cache.drain(5)
    assert cache.l2.get("k") == "v2"
    assert cache.get("k") == "v2"
    cache._check_invariants()


def test_late_loser_never_brings_back_a_deleted_key(offload: ThreadPoolOffload) -> None:
    manual = ManualExecutor()
    cache = _race_cache(manual, offload)
    cache.set("k", "v1")
    assert cache.delete("k") is True
    manual.run_all()
    assert cache.drain(5)
    assert cache.l2.get("k") is None and cache.l1.get("k") is None
    cache._check_invariants()


def test_leg_in_flight_is_ordered_before_the_next_write(
    executor: concurrent.futures.Executor, offload: ThreadPoolOffload
) -> None:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(MemoryBackend(), l2, write=RaceWrite(), executor=executor, offload=offload)
    gate = l2.hold("set")
    cache.set("k", "v1")  # returns on L1's success; the L2 leg is stuck in flight
    assert l2.entered["set"].wait(5)
    l2.release("set")
    done = threading.Event()
    deleter = threading.Thread(target=lambda: (cache.delete("k"), done.set()))
    gate2 = l2.hold("delete")
    deleter.start()
    # The delete reaches L2 only after the v1 leg has finished there.
    assert l2.entered["delete"].wait(5)
    assert l2.inner.get("k") == "v1"
    l2.release("delete")
    deleter.join(5)
    assert done.is_set()
    assert cache.drain(5)
    assert l2.inner.get("k") is None
    assert gate.is_set() and gate2.is_set()
    cache._check_invariants()


def test_refill_never_overwrites_a_newer_write() -> None:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(MemoryBackend(), l2)
    cache.set("k", "old")
    cache.l1.clear()
    l2.hold("get")
    result: list[t.Any] = []
    reader = threading.Thread(target=lambda: result.append(cache.get("k")))
    reader.start()
    assert l2.entered["get"].wait(5)  # the read has L2's "old" on its way
    writer = threading.Thread(target=lambda: cache.set("k", "new"))
    l2.hold("set")
    writer.start()
    assert l2.entered["set"].wait(5)  # the write is in flight (L1 already holds "new")
    l2.release("get")
    reader.join(5)
    l2.release("set")
    writer.join(5)
    assert result == ["old"]  # the read linearizes before the write...
    assert cache.l1.get("k") == "new"  # ...and its refill did not overwrite the newer value
    assert cache.stats()["refills_skipped"] == 1
    cache._check_invariants()


def test_refill_after_delete_does_not_resurrect() -> None:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(MemoryBackend(), l2)
    cache.set("k", "v")
    cache.l1.clear()
    l2.hold("get")
    reader = threading.Thread(target=cache.get, args=("k",))
    reader.start()
    assert l2.entered["get"].wait(5)
    cache.l1.clear()
    deleter = threading.Thread(target=cache.delete, args=("k",))
    deleter.start()
    deleter.join(5)
    l2.release("get")
    reader.join(5)
    assert cache.l1.get("k") is None and cache.get("k") is None


def test_refill_failure_never_changes_the_answer() -> None:
    l1 = FaultyBackend(MemoryBackend(), "l1")
    cache = TieredCache(l1, MemoryBackend())
    cache.set("k", "v")
    l1.inner.clear()
    l1.fail("set")
    assert cache.get("k") == "v"
    assert cache.stats()["refill_errors"] == 1


def test_refill_never_when_configured() -> None:
    l1 = FaultyBackend(MemoryBackend(), "l1")
    cache = TieredCache(l1, MemoryBackend(), refill=Refill.NEVER)
    cache.l2.set("k", "v")
    assert cache.get("k") == "v"
    assert cache.get_many(["k"]) == {"k": "v"}
    assert l1.count("set") == 0


def test_l1_ttl_caps_writes_and_refills() -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), l1_ttl=10)
    cache.set("k", "v", ttl=100)
    assert cache.l1.get_entry("k").expires_at == pytest.approx(clock() + 10)  # type: ignore[union-attr]
    assert cache.l2.get_entry("k").expires_at == pytest.approx(clock() + 100)  # type: ignore[union-attr]
    clock.advance(11)
    assert cache.l1.get("k") is None
    assert cache.get_entry("k").expires_at == pytest.approx(clock() + 89)  # type: ignore[union-attr]
    assert cache.l1.get_entry("k").expires_at == pytest.approx(clock() + 10)  # type: ignore[union-attr]


def test_value_too_large_for_l1_lives_in_l2_only() -> None:
    cache = TieredCache(MemoryBackend(100, max_bytes=2_000), MemoryBackend())
    cache.set("k", b"small")
    cache.set("k", b"x" * 10_000)
    assert cache.l1.get("k") is None  # the older copy is gone
    assert cache.get("k") == b"x" * 10_000


# -- other operations --------------------------------------------------------------------------


def test_incr_goes_through_l2_and_drops_the_l1_copy() -> None:
    cache = TieredCache(MemoryBackend(), MemoryBackend())
    cache.set("n", 1)
    assert cache.incr("n", 5) == 6
    assert cache.l1.get("n") is None
    assert cache.get("n") == 6
    with pytest.raises(KeyError):
        cache.incr("missing")


def test_incr_of_a_key_l2_lost_is_missing_and_drops_the_l1_copy() -> None:
    # Another process deleted the key (or L2 evicted it): L1's copy must not bring it back.
    cache = TieredCache(MemoryBackend(), MemoryBackend())
    cache.set("n", 1)
    cache.l2.clear()
    with pytest.raises(KeyError):
        cache.incr("n")
    assert cache.l1.get("n") is None and cache.l2.get("n") is None
    assert cache.get("n") is None


def test_add_is_decided_by_l2() -> None:
    cache = TieredCache(MemoryBackend(), MemoryBackend())
    cache.l2.set("k", "theirs")
    assert cache.add("k", "mine") is False
    assert cache.get("k") == "theirs"
    assert cache.add("new", 1) is True
    assert cache.l1.get("new") == 1 and cache.l2.get("new") == 1


def test_delete_removes_l2_first_then_l1() -> None:
    l1, l2 = FaultyBackend(MemoryBackend(), "l1"), FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(l1, l2)
    cache.set("k", 1)
    l1.calls.clear()
    l2.calls.clear()
    order: list[str] = []
    l2_delete, l1_delete = l2.inner.delete_each, l1.inner.delete_each

    def recording(
        tier: str, delete: t.Callable[[t.Any], list[str]]
    ) -> t.Callable[[t.Any], list[str]]:
        def run(keys: t.Any) -> list[str]:
            order.append(tier)
            return delete(keys)

        return run

    l2.inner.delete_each = recording("l2", l2_delete)  # type: ignore[method-assign]
    l1.inner.delete_each = recording("l1", l1_delete)  # type: ignore[method-assign]
    assert cache.delete("k") is True
    assert order == ["l2", "l1"]


def test_delete_reports_a_failed_layer() -> None:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    cache = TieredCache(MemoryBackend(), l2)
    cache.set("k", 1)
    l2.fail("delete")
    with pytest.raises(BackendUnavailableError):
        cache.delete("k")
    assert cache.l1.get("k") is None  # L1 was still cleaned, so this process stops serving it


def test_clear_stops_in_flight_losers(offload: ThreadPoolOffload) -> None:
    manual = ManualExecutor()
    cache = _race_cache(manual, offload)
    cache.set("k", "v")
    cache.clear()
    manual.run_all()
    assert cache.drain(5)
    assert cache.l2.get("k") is None


def test_stats_count_lookups_per_layer() -> None:
    cache = TieredCache(MemoryBackend(), MemoryBackend())
    cache.set("a", 1)
    cache.l2.set("b", 2)
    for key in ["a", "b", "b", "c"]:
        cache.get(key)
    figures = cache.stats()
    assert (figures["hits"], figures["misses"], figures["errors"]) == (3, 1, 0)
    assert (figures["l1_hits"], figures["l2_hits"], figures["refills"]) == (2, 1, 1)
    assert figures["l1"]["backend"] == "memory" and figures["in_flight_keys"] == 0


def test_close_finishes_background_writes(offload: ThreadPoolOffload) -> None:
    l2 = FaultyBackend(MemoryBackend(), "l2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        cache = TieredCache(MemoryBackend(), l2, write=RaceWrite(), executor=pool, offload=offload)
        l2.hold("set")
        cache.set("k", "v")
        assert l2.entered["set"].wait(5)
        closer = threading.Thread(target=cache.close)
        closer.start()
        l2.release("set")
        closer.join(5)
        assert not closer.is_alive()
        assert l2.inner.get("k") == "v"


# -- nesting and deadlock freedom --------------------------------------------------------------


def test_three_tiers_nest() -> None:
    a, b, c = MemoryBackend(), MemoryBackend(), MemoryBackend()
    cache = TieredCache(a, TieredCache(b, c))
    entry = Entry("v", expires_at=None, version=123)
    cache.set_entry("k", entry)
    assert a.get_entry("k") == b.get_entry("k") == c.get_entry("k") == entry
    a.clear()
    b.clear()
    assert cache.get_entry("k") == entry
    assert a.get_entry("k") == b.get_entry("k") == entry
    assert cache.delete("k")
    assert (a.get("k"), b.get("k"), c.get("k")) == (None, None, None)


@pytest.mark.parametrize(
    "inner_write", [OptimisticParallelWrite(), RaceWrite()], ids=["parallel", "race"]
)
def test_nested_compositions_on_one_worker_do_not_deadlock(inner_write: t.Any) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        offload = ThreadPoolOffload(max_workers=1)
        inner = TieredCache(
            FaultyBackend(MemoryBackend(), "b"),  # not local: its legs go to the pool too
            MemoryBackend(),
            write=inner_write,
            executor=pool,
            offload=offload,
        )
        outer = TieredCache(
            FaultyBackend(MemoryBackend(), "a"),
            inner,
            write=OptimisticParallelWrite(),
            executor=pool,
            offload=offload,
        )
        outer.l1.local = False  # type: ignore[misc]
        outer.l1.inner.local = False  # type: ignore[attr-defined]
        finished = threading.Event()

        def work() -> None:
            for i in range(50):
                outer.set(f"k{i % 5}", i)
                outer.get(f"k{i % 5}")
                outer.get_many([f"k{j}" for j in range(5)])
            finished.set()

        worker = threading.Thread(target=work)
        worker.start()
        worker.join(20)
        assert finished.is_set(), "nested compositions deadlocked on a one-thread pool"
        assert offload.drain(10)
        offload.close()


def test_saturated_pool_does_not_deadlock() -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        caches = [
            TieredCache(
                MemoryBackend(), MemoryBackend(), write=OptimisticParallelWrite(), executor=pool
            )
            for _ in range(2)
        ]
        barrier = threading.Barrier(8)
        failures: list[BaseException] = []

        def work(i: int) -> None:
            try:
                barrier.wait(5)
                for r in range(40):
                    cache = caches[(i + r) % 2]
                    cache.set(f"k{r % 7}", (i, r))
                    cache.get(f"k{r % 7}")
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "deadlock on a saturated pool"
        assert not failures
        for cache in caches:
            cache._check_invariants()


def test_policy_called_from_a_pool_thread_runs_inline() -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cache = TieredCache(
            MemoryBackend(), MemoryBackend(), write=OptimisticParallelWrite(), executor=pool
        )
        # The only worker calls the cache, whose policy would otherwise wait for that worker.
        future = pool.submit(lambda: (cache.set("k", 1), cache.get("k"))[1])
        assert future.result(timeout=10) == 1


def test_null_l2_makes_an_l1_only_cache() -> None:
    cache = TieredCache(MemoryBackend(), NullBackend())
    cache.set("k", 1)
    assert cache.get("k") == 1
    assert cache.local is True
    assert cache.add("k", 2) is False
    assert cache.get("k") == 1
    assert cache.add("new", 3) is True
    assert cache.incr("k", 4) == 5
    assert cache.get("k") == 5
