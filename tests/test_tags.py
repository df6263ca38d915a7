"""Tags: invalidate_tags on every L2, through nesting, across processes, and as a state machine."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import typing as t
import uuid

import pytest
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from tieredcache import Entry
from tieredcache import EntryCodec
from tieredcache import InvalidKeyError
from tieredcache import MemoryBackend
from tieredcache import PickleSerializer
from tieredcache import SignedSerializer
from tieredcache import TieredCache
from tieredcache.backends.sqlite import SQLiteBackend
from tieredcache.testing.backplane import LocalBackplaneHub
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.tiered.tags import tag_key


def test_a_tagged_entry_round_trips_through_the_envelope() -> None:
    for serializer in (PickleSerializer(), SignedSerializer(b"k" * 32)):
        codec = EntryCodec(serializer)
        entry = Entry({"v": 1}, 123.0, 7, 100.0, ("user:7", "org:3"))
        assert codec.decode(codec.encode(entry)) == entry
        assert codec.decode(codec.retime(codec.encode(entry), 200.0)).tags == entry.tags
        assert codec.decode(codec.encode(Entry(1, None, 1))).tags == ()


def test_invalidate_tags_hides_only_entries_written_before(tmp_path: t.Any) -> None:
    cache = TieredCache(MemoryBackend(), SQLiteBackend(str(tmp_path / "c.db")))
    cache.set("a", 1, tags=("user:7", "org:3"))
    cache.set_many({"b": 2, "c": 3}, tags=["org:3"])
    assert cache.add("d", 4, tags=("user:8",))
    cache.set("plain", 0)
    cache.invalidate_tags(["org:3"])
    assert cache.get_many(["a", "b", "c", "d", "plain"]) == {"d": 4, "plain": 0}
    assert cache.get("a") is None and cache.l1_entry("b") is None
    cache.set("a", 10, tags=("org:3",))  # written after: visible
    assert cache.get("a") == 10
    assert cache.l2.get_entry(tag_key("org:3")) is not None  # recorded in L2
    # A new composition on the same L2 (a process started later) never sees them.
    later = TieredCache(MemoryBackend(), SQLiteBackend(str(tmp_path / "c.db")))
    assert later.get_many(["a", "b", "c"]) == {"a": 10}


def test_get_or_set_stores_tags(tmp_path: t.Any) -> None:
    cache = TieredCache(MemoryBackend(), SQLiteBackend(str(tmp_path / "c.db")))
    assert cache.get_or_set("k", lambda: "v", tags=("t",)) == "v"
    assert cache.get_entry("k").tags == ("t",)  # type: ignore[union-attr]
    cache.invalidate_tags(("t",))
    assert cache.get_or_set("k", lambda: "w", tags=("t",)) == "w"


@pytest.mark.parametrize("bad", ["single", [""], [1], 5])
def test_bad_tags_are_typed_errors_and_write_nothing(bad: t.Any) -> None:
    cache = TieredCache(MemoryBackend(), MemoryBackend())
    with pytest.raises(InvalidKeyError):
        cache.set("k", 1, tags=bad)
    with pytest.raises(InvalidKeyError):
        cache.invalidate_tags(bad)
    assert cache.get("k") is None


def test_nesting_applies_the_invalidation_at_every_level() -> None:
    inner = TieredCache(MemoryBackend(), MemoryBackend())
    outer = TieredCache(MemoryBackend(), inner)
    outer.set("k", 1, tags=("t",))
    outer.invalidate_tags(["t"])
    assert outer.get("k") is None and inner.get("k") is None
    assert inner.l2.get_entry(tag_key("t")) is not None


def test_another_composition_learns_within_tag_ttl() -> None:
    clock = FakeClock()
    shared = MemoryBackend(timer=clock)
    a = TieredCache(MemoryBackend(timer=clock), shared, timer=clock, tag_ttl=5)
    b = TieredCache(MemoryBackend(timer=clock), shared, timer=clock, tag_ttl=5)
    a.set("k", 1, tags=("t",))
    assert b.get("k") == 1  # b now trusts its copy of "t" for 5 s
    a.invalidate_tags(["t"])
    assert a.get("k") is None
    clock.advance(5)
    assert b.get("k") is None


@pytest.mark.parametrize("kind", ["redis", "memcached", "sqlite"])
def test_tags_work_on_every_l2(kind: str, request: pytest.FixtureRequest, tmp_path: t.Any) -> None:
    prefix = f"tags{uuid.uuid4().hex[:8]}:"
    l2: t.Any
    if kind == "redis":
        from tieredcache import RedisBackend

        l2 = RedisBackend.from_url(request.getfixturevalue("redis_url"), prefix=prefix)
    elif kind == "memcached":
        from tieredcache import MemcachedBackend

        l2 = MemcachedBackend(request.getfixturevalue("memcached_servers"), prefix=prefix)
    else:
        l2 = SQLiteBackend(str(tmp_path / "c.db"))
    cache = TieredCache(MemoryBackend(), l2)
    try:
        cache.set("a", 1, tags=("t",))
        cache.set("b", 2)
        assert l2.get_entry("a").tags == ("t",)
        cache.invalidate_tags(["t"])
        assert cache.get_many(["a", "b"]) == {"b": 2}
        fresh = TieredCache(MemoryBackend(), l2)
        assert fresh.get("a") is None
    finally:
        cache.close()


# -- the state machine ----------------------------------------------------------------------------

TAGS = st.sampled_from(["x", "y", "z"])


class TagMachine(RuleBasedStateMachine):
    """Two compositions over one L2 joined by a backplane whose messages the machine delivers:
    an entry written before ``invalidate_tags`` of one of its tags is never returned after it,
    by the invalidating composition at once, by the other once the announcement is delivered
    or ``tag_ttl`` has passed."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1_000_000.0)
        self.hub = LocalBackplaneHub()
        shared = MemoryBackend(timer=self.clock)
        self.caches = [
            TieredCache(
                MemoryBackend(timer=self.clock),
                shared,
                timer=self.clock,
                tag_ttl=1,
                backplane=self.hub.new(),
            )
            for _ in range(2)
        ]
        self.tags_of: dict[str, tuple[str, ...]] = {}
        self.values: dict[str, int] = {}
        self.dead: dict[int, set[str]] = {0: set(), 1: set()}  # per cache: keys it must not see
        self.pending: set[str] = set()  # invalidated, not yet known to the other cache

    def _sync(self) -> None:
        for cache in self.caches:
            cache.gate.send_announcements()
        self.hub.deliver()

    def _learn(self) -> None:
        self.dead[0] |= self.pending
        self.dead[1] |= self.pending
        self.pending = set()

    @rule(
        who=st.integers(0, 1),
        key=st.sampled_from("abc"),
        value=st.integers(0, 9),
        tags=st.lists(TAGS, max_size=2, unique=True),
    )
    def write(self, who: int, key: str, value: int, tags: list[str]) -> None:
        self.caches[who].set(key, value, tags=tags)
        self._sync()  # the other L1 drops its copy (and learns pending invalidations)
        self._learn()
        self.values[key], self.tags_of[key] = value, tuple(tags)
        for dead in self.dead.values():
            dead.discard(key)

    @rule(who=st.integers(0, 1), tags=st.lists(TAGS, min_size=1, max_size=2, unique=True))
    def invalidate(self, who: int, tags: list[str]) -> None:
        self.caches[who].invalidate_tags(tags)
        hit = {k for k, kt in self.tags_of.items() if set(kt) & set(tags)}
        self.dead[who] |= hit
        self.pending |= hit - self.dead[1 - who]

    @rule(who=st.integers(0, 1), key=st.sampled_from("abc"))
    def read(self, who: int, key: str) -> None:
        value = self.caches[who].get(key)
        if key in self.dead[who]:
            assert value is None, f"{key} was invalidated but cache {who} returned {value}"
        elif key in self.values and key not in self.pending:
            assert value == self.values[key]

    @rule()
    def deliver(self) -> None:
        self._sync()
        self._learn()

    @rule()
    def tag_ttl_passes(self) -> None:
        self.clock.advance(1)
        self._learn()

    @invariant()
    def get_many_agrees(self) -> None:
        for who in (0, 1):
            found = self.caches[who].get_many(list("abc"))
            assert not set(found) & self.dead[who]


TestTagMachine = TagMachine.TestCase
TestTagMachine.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- two processes on one real Redis --------------------------------------------------------------


def make_cache(url: str, prefix: str) -> t.Any:
    from tieredcache import RedisBackend
    from tieredcache import RedisBackplane

    backplane = RedisBackplane.from_url(url, channel=f"{prefix}invalidate")
    cache = TieredCache(
        MemoryBackend(),
        RedisBackend.from_url(url, prefix=prefix),
        backplane=backplane,
        tag_ttl=3600,  # only the backplane can tell the other composition in time
    )
    assert backplane.wait_connected(5)
    return cache


LATER = textwrap.dedent(
    """
    import sys
    from tieredcache import MemoryBackend, RedisBackend, TieredCache
    cache = TieredCache(MemoryBackend(), RedisBackend.from_url(sys.argv[1], prefix=sys.argv[2]))
    print(repr(cache.get_many(["a", "b", "c"])))
    cache.close()
    """
)


def test_tags_across_processes_on_real_redis(redis_url: str) -> None:
    prefix = f"tagx{uuid.uuid4().hex[:8]}:"
    a, b = make_cache(redis_url, prefix), make_cache(redis_url, prefix)
    try:
        a.set("a", 1, tags=("user:7",))
        a.set("b", 2, tags=("org:3",))
        a.set("c", 3)
        assert b.get_many(["a", "b", "c"]) == {"a": 1, "b": 2, "c": 3}  # now in b's L1
        start = time.monotonic()
        a.invalidate_tags(["user:7"])
        assert a.get("a") is None
        assert wait_until(lambda: b.get("a") is None, 5)
        print(f"tag invalidation seen in {(time.monotonic() - start) * 1000:.1f} ms")
        assert b.get_many(["a", "b", "c"]) == {"b": 2, "c": 3}
        out = subprocess.run(
            [sys.executable, "-c", LATER, redis_url, prefix],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout.strip() == repr({"b": 2, "c": 3})
    finally:
        a.close()
        b.close()


# -- pattern invalidation -------------------------------------------------------------------------


def test_pattern_invalidation_across_processes_on_real_redis(redis_url: str) -> None:
    import redis

    prefix = f"patx{uuid.uuid4().hex[:8]}:"
    a, b = make_cache(redis_url, prefix), make_cache(redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    client.set("outside:session:1", b"kept")  # outside the prefix: never touched
    try:
        a.set_many({"session:1": 1, "session:2": 2, "user:1": 3})
        assert b.get_many(["session:1", "session:2", "user:1"]) == {
            "session:1": 1,
            "session:2": 2,
            "user:1": 3,
        }
        assert a.invalidate_pattern("session:*") == 2
        assert a.get_many(["session:1", "session:2", "user:1"]) == {"user:1": 3}
        assert wait_until(lambda: b.l1.get("session:1") is None, 5)
        assert b.get_many(["session:1", "session:2", "user:1"]) == {"user:1": 3}
        assert client.get("outside:session:1") == b"kept"
        later = subprocess.run(
            [
                sys.executable,
                "-c",
                LATER.replace('["a", "b", "c"]', '["session:1", "user:1"]'),
                redis_url,
                prefix,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert later.stdout.strip() == repr({"user:1": 3})
    finally:
        client.delete("outside:session:1")
        client.close()
        a.close()
        b.close()


def test_pattern_invalidation_on_memcached_says_to_use_tags(memcached_servers: t.Any) -> None:
    from tieredcache import MemcachedBackend
    from tieredcache import UnsupportedOperationError

    cache = TieredCache(MemoryBackend(), MemcachedBackend(memcached_servers, prefix="patm:"))
    try:
        cache.set("session:1", 1)
        with pytest.raises(UnsupportedOperationError, match="tag"):
            cache.invalidate_pattern("session:*")
        assert cache.get("session:1") == 1  # nothing deleted
    finally:
        cache.close()


def test_pattern_invalidation_is_ordered_against_a_refill() -> None:
    # A read that fetched a matched key from L2 before the deletion cannot put it back in L1.
    l1, l2 = MemoryBackend(), MemoryBackend()
    cache = TieredCache(l1, l2)
    l2.set("session:1", "old")
    tokens = cache._ordering.begin_read(["session:1"])
    fetched = l2.get_entries(["session:1"])
    assert cache.invalidate_pattern("session:*") == 1
    cache._reader.refill_l1(dict(zip(["session:1"], tokens)), fetched)
    cache._ordering.end_read(["session:1"], tokens)
    assert cache.get("session:1") is None
