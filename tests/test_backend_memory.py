"""MemoryBackend: the contract, plus its bounds under random operations."""

from __future__ import annotations

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
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.contract import BackendContract


class TestMemoryBackend(BackendContract):
    shared_store = False

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
