"""memoize, memoize_many, and the loader controls of get_or_set."""

from __future__ import annotations

import threading
import typing as t

import pytest

from tieredcache import Loaded
from tieredcache import LoaderTimeoutError
from tieredcache import MemoryBackend
from tieredcache import TieredCache
from tieredcache import UnstableKeyError
from tieredcache.errors import ConfigurationError
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until

WAIT = 10.0


@pytest.fixture
def cache() -> t.Iterator[TieredCache]:
    composed = TieredCache(MemoryBackend(), MemoryBackend())
    yield composed
    composed.close()


def test_arguments_bound_to_the_signature_share_an_entry(cache: TieredCache) -> None:
    calls = []

    @cache.memoize(ttl=60)
    def f(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    assert f(1, b=2) == f(1, 2) == f(1) == 3
    assert calls == [(1, 2)]
    assert f.cache_key(1) == f.cache_key(a=1, b=2)
    assert f.cache_key(1).startswith(f"{__name__}.")
    assert f.invalidate(1)
    assert f(1) == 3 and len(calls) == 2


def test_methods_and_classmethods_leave_self_out(cache: TieredCache) -> None:
    calls = []

    class Repo:
        def __init__(self, n: int) -> None:
            self.n = n

        @cache.memoize(ttl=60)
        def get(self, x: int) -> int:
            calls.append(x)
            return x * self.n

        @classmethod
        @cache.memoize(ttl=60)
        def make(cls, x: int) -> str:
            calls.append(-x)
            return f"{cls.__name__}{x}"

    first, second = Repo(2), Repo(3)
    assert first.get(5) == 10
    assert second.get(5) == 10  # self is not part of the key
    assert Repo.make(1) == Repo.make(1) == "Repo1"
    assert calls == [5, -1]
    assert second.get.invalidate(5)
    assert second.get(5) == 15
    assert first.get.refresh(5) == 10


def test_an_unstable_argument_is_named_unless_key_is_given(cache: TieredCache) -> None:
    @cache.memoize()
    def f(thing: object) -> int:
        return 1

    with pytest.raises(UnstableKeyError, match="'thing'"):
        f(object())

    @cache.memoize(key=lambda thing: "fixed")
    def g(thing: object) -> int:
        return 2

    assert g(object()) == 2
    assert g.cache_key(object()).endswith(":fixed")


def test_long_keys_are_hashed(cache: TieredCache) -> None:
    @cache.memoize()
    def f(text: str) -> str:
        return text

    key = f.cache_key("x" * 1000)
    assert len(key) < 200 and "#" in key
    assert f("x" * 1000) == "x" * 1000


def test_concurrent_calls_run_once_and_share_an_exception(cache: TieredCache) -> None:
    started, release = threading.Event(), threading.Event()
    calls = []

    @cache.memoize()
    def slow(x: int) -> int:
        calls.append(x)
        started.set()
        assert release.wait(WAIT)
        raise ValueError("boom")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            slow(1)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    threads[0].start()
    assert started.wait(WAIT)
    for thread in threads[1:]:
        thread.start()
    key = slow.cache_key(1)
    assert wait_until(lambda: cache._flights.waiting(key) == 4, WAIT)
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert len(errors) == 5
    assert cache.get(slow.cache_key(1)) is None  # not cached
    assert calls == [1]  # run once for all five callers


def test_unless_bypasses_the_cache(cache: TieredCache) -> None:
    calls = []

    @cache.memoize(unless=lambda x: x < 0)
    def f(x: int) -> int:
        calls.append(x)
        return x

    assert f(-1) == f(-1) == -1
    assert calls == [-1, -1]


def test_memoize_with_tags(cache: TieredCache) -> None:
    @cache.memoize(tags=("users",))
    def user(uid: int) -> str:
        return f"user{uid}"

    user(1)
    assert cache.get_entry(user.cache_key(1)).tags == ("users",)  # type: ignore[union-attr]
    cache.invalidate_tags(["users"])
    assert cache.get(user.cache_key(1)) is None


def test_memoize_many_loads_only_the_missing(cache: TieredCache) -> None:
    calls = []

    @cache.memoize_many(ttl=60)
    def users(*ids: int) -> list[str]:
        calls.append(ids)
        return [f"u{i}" for i in ids]

    assert users(1, 2) == ["u1", "u2"]
    assert users(2, 3, 1) == ["u2", "u3", "u1"]
    assert calls == [(1, 2), (3,)]
    assert users.invalidate(1) == 1
    assert users(1) == ["u1"] and calls[-1] == (1,)


def test_loaded_chooses_ttl_and_tags_or_skips_storing() -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), timer=clock)
    assert cache.get_or_set("a", lambda: Loaded("v", ttl=5, tags=("t",))) == "v"
    entry = cache.get_entry("a")
    assert entry is not None and entry.tags == ("t",)
    assert entry.expires_at == pytest.approx(clock() + 5)
    assert cache.get_or_set("b", lambda: Loaded("w", store=False)) == "w"
    assert cache.get("b") is None


def test_hard_timeout_raises_and_the_loader_still_stores(cache: TieredCache) -> None:
    release = threading.Event()

    def slow() -> str:
        assert release.wait(WAIT)
        return "late"

    with pytest.raises(LoaderTimeoutError):
        cache.get_or_set("k", slow, hard_timeout=0.05)
    release.set()
    assert wait_until(lambda: cache.get("k") == "late", WAIT)


def test_soft_timeout_returns_the_stale_value_then_the_refresh_lands() -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), timer=clock)
    cache.get_or_set("k", lambda: "old", ttl=10, stale_ttl=100)
    clock.advance(11)
    release = threading.Event()

    def slow() -> str:
        assert release.wait(WAIT)
        return "new"

    assert cache.get_or_set("k", slow, ttl=10, stale_ttl=100, soft_timeout=0.05) == "old"
    release.set()
    assert wait_until(lambda: cache.get("k") == "new", WAIT)
    clock.advance(11)
    # A fast loader within the soft timeout: its fresh value is returned.
    assert cache.get_or_set("k", lambda: "newer", ttl=10, stale_ttl=100, soft_timeout=5) == "newer"


def test_refresh_ahead_reloads_a_hot_key_before_it_expires() -> None:
    clock = FakeClock()
    cache = TieredCache(MemoryBackend(timer=clock), MemoryBackend(timer=clock), timer=clock)
    values = iter(["v1", "v2"])
    assert cache.get_or_set("k", lambda: next(values), ttl=10, refresh_ahead=0.8) == "v1"
    clock.advance(8.5)
    assert cache.get_or_set("k", lambda: next(values), ttl=10, refresh_ahead=0.8) == "v1"
    assert cache.drain(WAIT)
    assert wait_until(lambda: cache.get("k") == "v2", WAIT)


@pytest.mark.parametrize(
    "options", [{"soft_timeout": 0}, {"hard_timeout": -1}, {"refresh_ahead": 1.5}]
)
def test_bad_loader_options_are_configuration_errors(
    cache: TieredCache, options: dict[str, t.Any]
) -> None:
    with pytest.raises(ConfigurationError):
        cache.get_or_set("k", lambda: 1, **options)
    assert cache.get("k") is None
