"""MemoryBackend: the contract, plus its bounds under random operations."""

from __future__ import annotations

import collections
import gc
import tracemalloc
import typing as t

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from tieredcache import BackendResponseError
from tieredcache import ConfigurationError
from tieredcache import Entry
from tieredcache import MemoryBackend
from tieredcache import PickleSerializer
from tieredcache import ValueTooLargeError
from tieredcache.backends import memory as memory_module
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.contract import BackendContract


class TestMemoryBackend(BackendContract):
    shared_store = False
    envelopes = False

    @pytest.fixture(params=["objects", "pickled"])
    def make_backend(self, request: pytest.FixtureRequest) -> t.Callable[..., MemoryBackend]:
        def factory(**options: t.Any) -> MemoryBackend:
            if request.param == "pickled":
                options.setdefault("serializer", PickleSerializer())
            else:
                options.pop("serializer", None)
            return MemoryBackend(1000, **options)

        return factory

    def write_raw(self, backend: MemoryBackend, key: str, data: bytes) -> None:  # type: ignore[override]
        if backend.serializer is None:
            pytest.skip("an object store has no payload to corrupt")
        if data.startswith(b"\x80"):
            pytest.skip("an in-process store keeps no envelope, so a bare pickle is valid")
        backend.set(key, "placeholder")
        with backend._lock:
            backend._data[key] = Entry(data)

    def test_unserializable_value_writes_nothing(self, backend: MemoryBackend) -> None:  # type: ignore[override]
        if backend.serializer is None:
            pytest.skip("an object store does not serialize")
        super().test_unserializable_value_writes_nothing(backend)


def test_pickled_store_returns_copies() -> None:
    backend = MemoryBackend(10, serializer=PickleSerializer())
    value = {"list": [1]}
    backend.set("k", value)
    value["list"].append(2)
    got = backend.get("k")
    got["list"].append(3)
    assert backend.get("k") == {"list": [1]}


def test_lru_evicts_least_recently_read() -> None:
    backend = MemoryBackend(3)
    for key in "abc":
        backend.set(key, key)
    backend.get("a")  # a is now the most recent
    backend.set("d", "d")
    assert backend.get_many(["a", "b", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}


def test_lfu_evicts_least_frequently_read() -> None:
    backend = MemoryBackend(3, policy="lfu")
    for key in "abc":
        backend.set(key, key)
    for _ in range(3):
        backend.get("a")
        backend.get("c")
    backend.set("d", "d")
    assert not backend.has("b")
    assert backend.has("a") and backend.has("c")


def test_fifo_ignores_reads() -> None:
    backend = MemoryBackend(2, policy="fifo")
    backend.set("a", 1)
    backend.set("b", 2)
    backend.get("a")
    backend.set("c", 3)
    assert not backend.has("a")


def test_byte_bound() -> None:
    backend = MemoryBackend(1000, max_bytes=10_000)
    for i in range(100):
        backend.set(f"k{i}", b"x" * 500)
        backend._check_invariants()
    assert backend.currsize <= 10_000
    assert 0 < len(backend) < 100
    with pytest.raises(BackendResponseError):
        backend.set("huge", b"x" * 20_000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"maxsize": 0},
        {"maxsize": 1.5},
        {"max_bytes": 0},
        {"policy": "random"},
        {"default_ttl": "1"},
    ],
)
def test_bad_configuration(kwargs: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryBackend(**kwargs)


def test_expired_entries_are_purged() -> None:
    clock = FakeClock()
    backend = MemoryBackend(10, timer=clock)
    backend.set("a", 1, ttl=1)
    backend.set("b", 2)
    clock.advance(2)
    assert backend.purge_expired() == 1
    assert len(backend) == 1


class MemoryBoundMachine(RuleBasedStateMachine):
    """Random operations never break the bounds or desynchronise the internal maps."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.backend = MemoryBackend(
            5, max_bytes=2_000, policy="lru", serializer=PickleSerializer(), timer=self.clock
        )
        self.model: dict[str, bytes] = {}

    keys = st.sampled_from("abcdefgh")

    @rule(key=keys, size=st.integers(0, 600), ttl=st.sampled_from([None, 1, 5]))
    def set(self, key: str, size: int, ttl: int | None) -> None:
        self.backend.set(key, b"v" * size, ttl=ttl)

    @rule(key=keys)
    def get(self, key: str) -> None:
        got = self.backend.get(key)
        assert got is None or set(got) <= {ord("v")}

    @rule(key=keys)
    def delete(self, key: str) -> None:
        self.backend.delete(key)
        assert not self.backend.has(key)

    @rule(seconds=st.sampled_from([0.5, 1, 3]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def bounded(self) -> None:
        self.backend._check_invariants()


TestMemoryBounds = MemoryBoundMachine.TestCase
TestMemoryBounds.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


class EvictionOrderMachine(RuleBasedStateMachine):
    """Batch writes (one call into the order) evict exactly as writes of one key at a time:
    the backend holds what an LRU or FIFO model of ``maxsize`` entries holds."""

    def __init__(self) -> None:
        super().__init__()
        self.policy = "lru"
        self.backend = MemoryBackend(4, policy=self.policy)
        self.model: collections.OrderedDict[str, int] = collections.OrderedDict()

    keys = st.sampled_from("abcdefgh")

    @rule(policy=st.sampled_from(["lru", "fifo"]))
    def restart(self, policy: str) -> None:
        self.policy = policy
        self.backend = MemoryBackend(4, policy=policy)
        self.model.clear()

    def _store(self, key: str, value: int) -> None:
        self.model.pop(key, None)
        self.model[key] = value
        while len(self.model) > 4:
            self.model.popitem(last=False)

    @rule(items=st.dictionaries(keys, st.integers(0, 9), min_size=2, max_size=6))
    def set_many(self, items: dict[str, int]) -> None:
        self.backend.set_many(items)
        for key, value in items.items():
            self._store(key, value)

    @rule(key=keys, value=st.integers(0, 9))
    def set(self, key: str, value: int) -> None:
        self.backend.set(key, value)
        self._store(key, value)

    @rule(key=keys)
    def get(self, key: str) -> None:
        assert self.backend.get(key) == self.model.get(key)
        if key in self.model and self.policy == "lru":
            self.model.move_to_end(key)

    @invariant()
    def same_entries(self) -> None:
        # iter_keys records no reads: checking leaves the eviction order as it is.
        assert sorted(self.backend.iter_keys()) == sorted(self.model)
        self.backend._check_invariants()


TestEvictionOrder = EvictionOrderMachine.TestCase
TestEvictionOrder.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


# -- max_bytes bounds what the process really holds ---------------------------------------------


def _record(i: int) -> t.Any:
    """Values of every kind max_bytes promises to size: containers, nested, and scalars."""
    kind = i % 7
    if kind == 0:
        return [j * 1000 + i for j in range(50)]
    if kind == 1:
        return {f"field{j}_{i}": float(j) + i for j in range(10)}
    if kind == 2:
        return f"text {i} " * 20
    if kind == 3:
        return b"x" * 300 + str(i).encode()
    if kind == 4:
        return 10_000 + i
    if kind == 5:
        return {"rows": [(i, str(i)) for _ in range(5)], "tags": {i, i + 1}, "t": (i + 0.5,)}
    return [[str(i), i], {"n": [i] * 3}]


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo"])
@pytest.mark.parametrize("ttl", [None, 3600], ids=["forever", "ttl"])
def test_max_bytes_bounds_the_memory_really_held(policy: str, ttl: int | None) -> None:
    bound = 500_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        backend = MemoryBackend(1_000_000, max_bytes=bound, policy=policy)
        peak = 0
        for i in range(6_000):
            backend.set(f"key{i}", _record(i), ttl=ttl)  # a fresh value, referenced by L1 only
            if i % 3 == 0:
                backend.get(f"key{i // 2}")
            if i % 500 == 499:
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
                peak = max(peak, held)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    backend._check_invariants()
    assert backend.currsize <= bound
    # Never more than 10% over the bound, and the cache fills up to it, not far below.
    assert peak <= 1.1 * bound
    assert 0.9 * bound <= held <= 1.1 * bound
    assert len(backend) > 300


def test_max_bytes_with_a_serializer_bounds_the_payloads() -> None:
    bound = 300_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        backend = MemoryBackend(1_000_000, max_bytes=bound, serializer=PickleSerializer())
        for i in range(3_000):
            backend.set(f"key{i}", _record(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.9 * bound <= held <= 1.1 * bound


def test_max_bytes_sizing_is_a_write_cost_only() -> None:
    backend = MemoryBackend(10, max_bytes=100_000)
    value = [1000 + j for j in range(50)]
    backend.set("k", value)
    calls = []
    original = memory_module.deep_sizeof
    memory_module.deep_sizeof = lambda v: calls.append(v) or original(v)  # type: ignore[assignment]
    try:
        for _ in range(100):
            assert backend.get("k") is value
            backend.get_entry("k")
            backend.get_many(["k"])
    finally:
        memory_module.deep_sizeof = original  # type: ignore[assignment]
    assert calls == []


def test_replayed_reads_move_their_keys_and_skip_keys_gone_since() -> None:
    from tieredcache.backends.memory_order import LinkedOrder

    order = LinkedOrder(10, lru=True)
    order.add_units("abcdef")
    reads = collections.deque(["b", "gone", "a", "also-gone", "c"])
    order.replay(reads)
    assert list(order.keys()) == ["d", "e", "f", "b", "a", "c"] and not reads
    order.replay(collections.deque(["x", "y"]))  # nothing held: nothing moves
    assert list(order.keys()) == ["d", "e", "f", "b", "a", "c"]


def test_an_incr_whose_result_does_not_fit_max_bytes_keeps_the_old_value() -> None:
    backend = MemoryBackend(max_bytes=50_000)
    for i in range(10):
        backend.set(f"other{i}", i)
    backend.set("n", 1)
    with pytest.raises(ValueTooLargeError):
        backend.incr("n", 2**500_000)  # a result of about 65 kB
    assert backend.get("n") == 1
    assert all(backend.get(f"other{i}") == i for i in range(10))  # nothing was evicted
    backend._check_invariants()
