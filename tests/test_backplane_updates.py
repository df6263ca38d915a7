"""Announcements in the write's round trip, in-place L1 updates, and fills that announce
nothing: against a real redis-server."""

from __future__ import annotations

import typing as t

import pytest
import redis

from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import RedisBackplane
from tieredcache import TieredCache
from tieredcache.backplane import Message
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.errors import BackendError
from tieredcache.testing.clock import wait_until
from tieredcache.tiered.coherence import OwnWrites
from tieredcache.tiered.coherence import apply_message


def make_cache(url: str) -> TieredCache:
    backplane = RedisBackplane.from_url(url, channel="test:updates")
    cache = TieredCache(
        MemoryBackend(), RedisBackend.from_url(url, prefix="upd:"), backplane=backplane
    )
    assert backplane.wait_connected(5)
    return cache


@pytest.fixture
def pair(redis_url: str) -> t.Iterator[tuple[TieredCache, TieredCache]]:
    a, b = make_cache(redis_url), make_cache(redis_url)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def raw(redis_url: str) -> t.Iterator[t.Any]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def calls(raw: t.Any, command: str) -> int:
    stats = raw.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def remote_set(cache: TieredCache, key: str, entry: Entry) -> Message:
    """A "set" message from another process carrying ``entry``."""
    codec = t.cast(RedisBackend, cache.l2).codec
    return Message(False, "set", [key], next_version(), {key: codec.encode(entry)})


def test_a_set_and_its_announcement_share_one_transaction(
    pair: tuple[TieredCache, TieredCache], raw: t.Any
) -> None:
    a, _ = pair
    assert a.gate.inline
    before = {c: calls(raw, c) for c in ("set", "publish", "multi", "exec")}
    a.set("k", "v")
    after = {c: calls(raw, c) for c in ("set", "publish", "multi", "exec")}
    assert {c: after[c] - before[c] for c in before} == {
        "set": 1,
        "publish": 1,
        "multi": 1,
        "exec": 1,
    }
    assert a.stats()["backplane"]["published"] >= 1
    assert a.stats()["announce_pending"] == 0


def test_another_process_updates_a_held_copy_in_place(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    a, b = pair
    a.set("k", "v1")
    # The announcement of v1 reaches b first (b holds nothing yet: it is ignored); a read
    # during its delivery could otherwise see its refill evicted.
    assert wait_until(lambda: b.stats()["invalidations_received"] >= 1, 5)
    assert b.get("k") == "v1"
    l2_hits = b.stats()["l2_hits"]
    a.set("k", "v2")
    assert wait_until(lambda: b.l1.get("k") == "v2", 5)
    assert b.get("k") == "v2"
    assert b.stats()["l2_hits"] == l2_hits  # served by L1: no read of Redis


def test_a_key_not_held_is_not_inserted(pair: tuple[TieredCache, TieredCache]) -> None:
    a, b = pair
    a.set("k", "v1")
    assert wait_until(lambda: b.stats()["invalidations_received"] >= 1, 5)
    assert b.l1.get("k") is None
    # Directly too, whatever the timing of the subscriber.
    apply_message(b, OwnWrites(), remote_set(b, "other", Entry("x", None, next_version())))
    assert b.l1.get("other") is None


def test_an_older_entry_never_overwrites_a_newer_copy(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    old = Entry("old", None, next_version())
    b.l1.set_entry("k", Entry("new", None, next_version()))
    assert apply_message(b, OwnWrites(), remote_set(b, "k", old)) == 0
    assert b.l1.get("k") is None  # evicted: the next read fetches L2's truth
    newer = Entry("newer", None, next_version())
    b.l1.set_entry("k", Entry("held", None, next_version() - 10**9))
    assert apply_message(b, OwnWrites(), remote_set(b, "k", newer)) == 1
    assert b.l1.get("k") == "newer"


def test_an_expired_or_forged_entry_evicts(pair: tuple[TieredCache, TieredCache]) -> None:
    _, b = pair
    b.l1.set_entry("k", Entry("held", None, 1))
    expired = Entry("gone", b.timer() - 1, next_version())
    apply_message(b, OwnWrites(), remote_set(b, "k", expired))
    assert b.l1.get("k") is None
    b.l1.set_entry("k", Entry("held", None, 1))
    apply_message(b, OwnWrites(), Message(False, "set", ["k"], 2, {"k": b"not an envelope"}))
    assert b.l1.get("k") is None


def test_a_local_write_in_flight_or_unconfirmed_evicts_instead(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    b.l1.set_entry("k", Entry("held", None, 1))
    with b.ordering.write(["k"], next_version()):  # a local write of k is under way
        apply_message(b, OwnWrites(), remote_set(b, "k", Entry("theirs", None, next_version())))
        assert b.l1.get("k") is None
    b.l1.set_entry("k", Entry("mine", None, 1))
    own = OwnWrites()
    own.mark(["k"], 7)  # our announcement of k has not come back through the channel
    apply_message(b, own, remote_set(b, "k", Entry("theirs", None, next_version())))
    assert b.l1.get("k") is None
    own.confirm(["k"], 7)
    assert not own.waiting("k")


def test_a_refill_in_flight_is_skipped_after_an_update(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    token = b.ordering.begin_read_one("k")
    b.l1.set_entry("k", Entry("held", None, 1))
    apply_message(b, OwnWrites(), remote_set(b, "k", Entry("theirs", None, next_version())))
    assert not b.ordering.refill_allowed(token)
    b.ordering.end_read_one("k", token)


def test_the_announcement_is_sent_only_when_the_write_landed(
    pair: tuple[TieredCache, TieredCache], raw: t.Any
) -> None:
    a, b = pair
    a.set("k", "v1")
    assert b.get("k") == "v1"
    published = calls(raw, "publish")
    raw.config_set("maxmemory", "1")
    raw.config_set("maxmemory-policy", "noeviction")
    try:
        with pytest.raises(BackendError):
            a.set("k", "v2")  # OOM: the transaction is aborted, SET and PUBLISH alike
    finally:
        raw.config_set("maxmemory", "0")
    assert calls(raw, "publish") == published
    assert a.stats()["backplane"]["publish_errors"] >= 1
    assert b.get("k") == "v1"  # L2 and b's L1 still agree
    assert t.cast(RedisBackend, a.l2).get("k") == "v1"


def test_fills_announce_nothing(pair: tuple[TieredCache, TieredCache], raw: t.Any) -> None:
    a, b = pair
    published = calls(raw, "publish")
    stats = a.stats()["backplane"]["published"]
    assert a.get_or_set("k", lambda: "loaded", ttl=60) == "loaded"
    assert a.l1.get("k") == "loaded"
    assert b.get("k") == "loaded"
    assert calls(raw, "publish") == published
    assert a.stats()["backplane"]["published"] == stats
    assert a.wait_idle(5)
    assert a.stats()["announce_pending"] == 0


def test_a_losing_fill_returns_l2s_value(pair: tuple[TieredCache, TieredCache]) -> None:
    a, b = pair

    def loader() -> str:
        b.set("k", "theirs")  # another process stores the key while a loads
        return "mine"

    assert a.get_or_set("k", loader, ttl=60) == "theirs"
    # L1 took L2's value, unless b's announcement, handled meanwhile, superseded the copy.
    assert a.l1.get("k") in ("theirs", None)
    assert a.get("k") == "theirs"
    assert t.cast(RedisBackend, a.l2).get("k") == "theirs"


def test_the_entries_are_one_more_field_of_the_same_message(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    import json

    a, _ = pair
    plane = t.cast(RedisBackplane, a.backplane)
    channel, message, carries = plane.announcement("set", ["k"], 5, {"k": b"TC..."})
    assert carries and channel == b"test:updates"
    decoded = json.loads(message)
    assert decoded == {"o": plane.origin, "k": "set", "v": 5, "keys": ["k"], "e": {"k": "VEMuLi4="}}
    # Too large to carry: the message is the old eviction.
    _, message, carries = plane.announcement("set", ["k"], 5, {"k": b"x" * 2000})
    assert not carries and "e" not in json.loads(message)
