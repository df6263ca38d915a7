"""The backend contract as a pytest suite, shipped so that any backend can be checked.

Subclass :class:`BackendContract` in a module named ``test_*.py`` and provide a
``make_backend`` fixture: a factory ``make_backend(**options) -> Backend`` that accepts at
least ``timer=`` and ``serializer=`` and returns a backend on an empty store. Backends made
by one factory in one test share one store (so that one can read what another wrote), and
the fixture closes them at teardown::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def make_backend(self):
            ...

Optional capabilities are switched off with class attributes (``shared_store``,
``envelopes``, ``large_ok``). Override :meth:`BackendContract.write_raw` to let the suite
plant a corrupt payload directly in the store. The serialization and envelope promises are
in :mod:`tieredcache.testing.contract_payloads`, which :class:`BackendContract` includes.
"""

from __future__ import annotations

import threading
import typing as t

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tieredcache.backends.base import Backend
from tieredcache.entry import Entry
from tieredcache.errors import InvalidKeyError
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.contract_payloads import PayloadContract

__all__ = ["KEYS", "SAMPLES", "BackendContract"]

SAMPLES: dict[str, t.Any] = {
    "none": None,
    "false": False,
    "true": True,
    "zero": 0,
    "negative": -17,
    "bigint": 2**80 + 3,
    "float": 3.14159,
    "empty-bytes": b"",
    "bytes": b"\x00\xff binary \r\n",
    "empty-str": "",
    "unicode": "h\u00e9llo w\u00f6rld \u2603 \U0001f600",
    "empty-dict": {},
    "empty-list": [],
    "nested": {"a": [1, 2, {"b": (3, 4)}], "c": {"d": None}},
    "large": b"x" * 200_000,
    "large-str": "\u00fc" * 50_000,
}
"""Values every backend must round-trip exactly (with the default serializer)."""

KEYS: dict[str, str] = {
    "plain": "user:42",
    "unicode": "cl\u00e9-\u2603-\U0001f600",
    "spaces": "a key with spaces",
    "control": "tab\there\nnewline",
    "long-250": "k" * 250,
    "long-1000": "L" * 1000,
    "empty": "",
}
"""Keys every backend must accept (stores that refuse some characters hash such keys)."""


class BackendContract(PayloadContract):
    """The promises every backend keeps; see the module docstring for how to use it."""

    #: The store accepts the large samples.
    large_ok: t.ClassVar[bool] = True
    #: The shortest lifetime the property tests write. A store that expires keys in real
    #: time (Redis) needs more than the milliseconds that pass between a write and a read.
    min_lifetime: t.ClassVar[float] = 0.001

    # -- fixtures and hooks -----------------------------------------------------------

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def backend(self, make_backend: t.Callable[..., Backend], clock: FakeClock) -> Backend:
        return make_backend(timer=clock)

    # -- basics -----------------------------------------------------------------------

    def test_missing_key_returns_default(self, backend: Backend) -> None:
        assert backend.get("missing") is None
        assert backend.get("missing", "fallback") == "fallback"
        assert backend.get_entry("missing") is None
        assert not backend.has("missing")

    @pytest.mark.parametrize("name", sorted(SAMPLES))
    def test_values_round_trip(self, backend: Backend, name: str) -> None:
        value = SAMPLES[name]
        if name.startswith("large") and not self.large_ok:
            pytest.skip("the store's item limit is below the large sample")
        backend.set("sample", value, ttl=None)
        assert backend.has("sample")
        got = backend.get("sample", default=object())
        assert got == value
        assert type(got) is type(value)

    @pytest.mark.parametrize("name", sorted(KEYS))
    def test_keys_are_accepted_and_distinct(self, backend: Backend, name: str) -> None:
        key = KEYS[name]
        backend.set(key, name)
        backend.set(key + "-other", "other")
        assert backend.get(key) == name
        assert backend.delete(key) is True
        assert backend.get(key) is None
        assert backend.get(key + "-other") == "other"

    def test_non_string_key_is_refused(self, backend: Backend) -> None:
        for bad in (1, b"bytes", None, ("tuple",)):
            with pytest.raises(InvalidKeyError):
                backend.get(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidKeyError):
                backend.set(bad, 1)  # type: ignore[arg-type]

    def test_set_overwrites(self, backend: Backend) -> None:
        backend.set("k", 1)
        backend.set("k", "two")
        assert backend.get("k") == "two"

    def test_delete(self, backend: Backend) -> None:
        backend.set("k", 1)
        assert backend.delete("k") is True
        assert backend.get("k") is None
        assert backend.delete("k") is False

    def test_clear_removes_everything(self, backend: Backend) -> None:
        backend.set_many({f"k{i}": i for i in range(20)})
        backend.clear()
        assert backend.get_many([f"k{i}" for i in range(20)]) == {}

    # -- time -------------------------------------------------------------------------

    def test_ttl_none_is_forever(self, backend: Backend, clock: FakeClock) -> None:
        backend.set("k", "v", ttl=None)
        assert backend.get_entry("k").expires_at is None  # type: ignore[union-attr]
        clock.advance(10 * 365 * 86400)
        assert backend.get("k") == "v"

    @pytest.mark.parametrize("ttl", [0, -1, -0.5])
    def test_ttl_zero_or_negative_stores_nothing_and_deletes(
        self, backend: Backend, ttl: float
    ) -> None:
        backend.set("k", "old")
        backend.set("k", "new", ttl=ttl)
        assert backend.get("k") is None
        assert backend.add("k2", "v", ttl=ttl) is False
        assert backend.get("k2") is None

    def test_sub_second_ttl_expires(self, backend: Backend, clock: FakeClock) -> None:
        # A quarter second past min_lifetime: a store that expires in real time keeps the
        # entry while the test runs, and whole seconds would be off either way.
        backend.set("k", "v", ttl=self.min_lifetime + 0.25)
        clock.advance(self.min_lifetime + 0.2)
        assert backend.get("k") == "v"
        clock.advance(0.1)
        assert backend.get("k") is None
        assert not backend.has("k")

    def test_expiry_is_exact_at_the_boundary(self, backend: Backend, clock: FakeClock) -> None:
        start = clock()
        backend.set_entry("k", Entry("v", expires_at=start + 5.0))
        clock.advance(4.999)
        assert backend.get("k") == "v"
        clock.advance(0.001)
        assert backend.get("k") is None

    def test_default_ttl_applies(self, make_backend: t.Callable[..., Backend]) -> None:
        clock = FakeClock()
        backend = make_backend(timer=clock, default_ttl=10)
        backend.set("k", "v")
        clock.advance(9.5)
        assert backend.get("k") == "v"
        clock.advance(1)
        assert backend.get("k") is None

    def test_expired_entry_is_never_returned(self, backend: Backend, clock: FakeClock) -> None:
        backend.set_many({"a": 1, "b": 2}, ttl=1)
        backend.set("c", 3, ttl=100)
        clock.advance(1)
        assert backend.get_many(["a", "b", "c"]) == {"c": 3}
        assert backend.get_entries(["a", "b"]) == {}

    def test_setting_an_expired_entry_deletes(self, backend: Backend, clock: FakeClock) -> None:
        backend.set("k", "v")
        backend.set_entry("k", Entry("old", expires_at=clock() - 1))
        assert backend.get("k") is None

    def test_entry_metadata_round_trips_exactly(self, backend: Backend, clock: FakeClock) -> None:
        now = clock()
        entry = Entry({"v": 1}, expires_at=now + 123.456789, version=2**62 + 5, stale_at=now + 1.5)
        backend.set_entry("k", entry)
        assert backend.get_entry("k") == entry
        forever = Entry("f", expires_at=None, version=7, stale_at=None)
        backend.set_entry("f", forever)
        assert backend.get_entry("f") == forever

    # The factory makes a fresh backend per example, so reusing it across examples is safe.
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        offset=st.floats(min_value=0.001, max_value=10 * 365 * 86400.0),
        version=st.integers(min_value=0, max_value=2**63 - 1),
        stale=st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
    )
    def test_entry_metadata_round_trips_property(
        self,
        make_backend: t.Callable[..., Backend],
        offset: float,
        version: int,
        stale: float | None,
    ) -> None:
        clock = FakeClock(1_700_000_000.0 + 0.123456)
        backend = make_backend(timer=clock)
        now = clock()
        offset = max(offset, self.min_lifetime)
        entry = Entry("v", now + offset, version, None if stale is None else now + stale)
        backend.set_entry("prop", entry)
        assert backend.get_entry("prop") == entry
        assert backend.get_entries(["prop"]) == {"prop": entry}

    def test_touch(self, backend: Backend, clock: FakeClock) -> None:
        backend.set("k", "v", ttl=1)
        assert backend.touch("k", ttl=100) is True
        clock.advance(50)
        assert backend.get("k") == "v"
        assert backend.touch("k", ttl=None) is True
        clock.advance(1000)
        assert backend.get("k") == "v"
        assert backend.touch("missing", ttl=10) is False
        assert backend.touch("k", ttl=0) is True
        assert backend.get("k") is None

    # -- add, incr ----------------------------------------------------------------------

    def test_add(self, backend: Backend, clock: FakeClock) -> None:
        assert backend.add("k", 1) is True
        assert backend.add("k", 2) is False
        assert backend.get("k") == 1
        backend.set("e", "old", ttl=1)
        clock.advance(2)
        assert backend.add("e", "new") is True
        assert backend.get("e") == "new"

    def test_add_is_atomic_under_threads(self, backend: Backend) -> None:
        threads_n = 8
        barrier = threading.Barrier(threads_n)
        results: list[tuple[int, bool]] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            barrier.wait(10)
            added = backend.add("contended", i)
            with lock:
                results.append((i, added))

        _run_threads(worker, threads_n)
        winners = [i for i, added in results if added]
        assert len(winners) == 1
        assert backend.get("contended") == winners[0]

    def test_incr_and_decr(self, backend: Backend, clock: FakeClock) -> None:
        backend.set("n", 10, ttl=100)
        expires_at = backend.get_entry("n").expires_at  # type: ignore[union-attr]
        assert backend.incr("n") == 11
        assert backend.incr("n", 5) == 16
        assert backend.decr("n", 20) == -4
        assert backend.get("n") == -4
        assert backend.get_entry("n").expires_at == expires_at  # type: ignore[union-attr]
        backend.set("big", 2**70)
        assert backend.incr("big") == 2**70 + 1

    def test_incr_missing_or_not_integer(self, backend: Backend, clock: FakeClock) -> None:
        with pytest.raises(KeyError):
            backend.incr("missing")
        backend.set("s", "text")
        with pytest.raises(TypeError):
            backend.incr("s")
        assert backend.get("s") == "text"
        backend.set("gone", 1, ttl=1)
        clock.advance(1)
        with pytest.raises(KeyError):
            backend.incr("gone")

    def test_incr_is_atomic_under_threads(self, backend: Backend) -> None:
        threads_n, per_thread = 6, 25
        backend.set("counter", 0)
        barrier = threading.Barrier(threads_n)

        def worker(_: int) -> None:
            barrier.wait(10)
            for _ in range(per_thread):
                backend.incr("counter")

        _run_threads(worker, threads_n)
        assert backend.get("counter") == threads_n * per_thread

    # -- batches ------------------------------------------------------------------------

    def test_many(self, backend: Backend, clock: FakeClock) -> None:
        backend.set_many({"a": 1, "b": None, "c": [3]}, ttl=10)
        assert backend.get_many(["a", "b", "c", "missing"]) == {"a": 1, "b": None, "c": [3]}
        assert backend.get_many([]) == {}
        assert backend.delete_many(["a", "missing"]) == 1
        assert backend.get_many(["a", "b"]) == {"b": None}
        clock.advance(10)
        assert backend.get_many(["b", "c"]) == {}

    def test_set_many_with_zero_ttl_deletes(self, backend: Backend) -> None:
        backend.set_many({"a": 1, "b": 2})
        backend.set_many({"a": 3, "b": 4}, ttl=0)
        assert backend.get_many(["a", "b"]) == {}

    def test_many_refuses_a_single_string(self, backend: Backend) -> None:
        with pytest.raises(InvalidKeyError):
            backend.get_many("abc")

    # -- get_or_set, stats, threads -----------------------------------------------------

    def test_get_or_set(self, backend: Backend) -> None:
        calls: list[str] = []

        def loader(value: str) -> t.Callable[[], str]:
            def load() -> str:
                calls.append(value)
                return value

            return load

        assert backend.get_or_set("k", loader("loaded"), ttl=10) == "loaded"
        assert backend.get_or_set("k", loader("again")) == "loaded"
        assert calls == ["loaded"]

    def test_get_or_set_is_single_flight(self, backend: Backend) -> None:
        waiters = 5
        entered, release = threading.Event(), threading.Event()
        calls = []

        def loader() -> str:
            calls.append(1)
            entered.set()
            assert release.wait(10)
            return "value"

        results: list[t.Any] = []
        leader = threading.Thread(target=lambda: results.append(backend.get_or_set("k", loader)))
        leader.start()
        assert entered.wait(10)
        others = [
            threading.Thread(target=lambda: results.append(backend.get_or_set("k", loader)))
            for _ in range(waiters)
        ]
        for thread in others:
            thread.start()
        assert wait_until(lambda: backend._flights.waiting("k") == waiters)
        release.set()
        for thread in [leader, *others]:
            thread.join(10)
        assert calls == [1]
        assert results == ["value"] * (waiters + 1)

    def test_get_or_set_error_reaches_every_waiter(self, backend: Backend) -> None:
        waiters = 4
        entered, release = threading.Event(), threading.Event()

        def loader() -> str:
            entered.set()
            assert release.wait(10)
            raise RuntimeError("loader failed")

        errors: list[BaseException] = []

        def call() -> None:
            try:
                backend.get_or_set("k", loader)
            except RuntimeError as exc:
                errors.append(exc)

        leader = threading.Thread(target=call)
        leader.start()
        assert entered.wait(10)
        others = [threading.Thread(target=call) for _ in range(waiters)]
        for thread in others:
            thread.start()
        assert wait_until(lambda: backend._flights.waiting("k") == waiters)
        release.set()
        for thread in [leader, *others]:
            thread.join(10)
        assert len(errors) == waiters + 1
        assert backend.get("k") is None
        assert backend.get_or_set("k", lambda: "recovered") == "recovered"

    def test_counters_add_up(self, backend: Backend) -> None:
        backend.set("a", 1)
        for key in ["a", "b", "a", "c"]:
            backend.get(key)
        backend.get_many(["a", "b", "d"])
        figures = backend.stats()
        assert figures["hits"] == 3
        assert figures["misses"] == 4
        assert figures["hits"] + figures["misses"] + figures["errors"] == 7

    def test_concurrent_mixed_operations(self, backend: Backend) -> None:
        threads_n, rounds = 6, 60
        barrier = threading.Barrier(threads_n)
        keys = ["a", "b", "c"]
        written = {(t_, r) for t_ in range(threads_n) for r in range(rounds)}

        def worker(i: int) -> None:
            barrier.wait(10)
            for r in range(rounds):
                key = keys[(i + r) % len(keys)]
                backend.set(key, (i, r))
                got = backend.get(key)
                assert got is None or tuple(got) in written
                if r % 7 == 0:
                    backend.delete(key)

        _run_threads(worker, threads_n)
        for key in keys:
            got = backend.get(key)
            assert got is None or tuple(got) in written


def _run_threads(worker: t.Callable[[int], None], count: int) -> None:
    """Run ``worker(i)`` in ``count`` threads and re-raise the first failure."""
    failures: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            worker(i)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a worker thread did not finish"
    if failures:
        raise failures[0]
