"""Writes that learn what they replaced, batched announcements that carry the step, in-place
L1 updates in any order of delivery, and fills that announce nothing: against a real
redis-server."""

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
from tieredcache.tiered.coherence import apply_message


def make_cache(url: str, linger: float = 0.002) -> TieredCache:
    backplane = RedisBackplane.from_url(url, channel="test:updates", linger=linger)
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


def remote_set(cache: TieredCache, key: str, entry: Entry, previous: int | None) -> Message:
    """A "set" message from another process: ``entry`` replaced version ``previous``."""
    codec = t.cast(RedisBackend, cache.l2).codec
    before = {} if previous is None else {key: previous}
    return Message(False, "set", [key], next_version(), {key: codec.encode(entry)}, before)


def test_a_set_is_one_command_and_its_announcement_waits_for_others(
    redis_url: str, raw: t.Any
) -> None:
    a = make_cache(redis_url)
    try:
        a.gate.background = False  # the test sends the queued announcements itself
        before = {c: calls(raw, c) for c in ("set", "publish", "multi", "exec")}
        for i in range(10):
            a.set(f"k{i}", i)
        assert a.stats()["announce_pending"] == 10
        assert a.gate.send_announcements()
        after = {c: calls(raw, c) for c in ("set", "publish", "multi", "exec")}
        assert {c: after[c] - before[c] for c in before} == {
            "set": 10,
            "publish": 1,  # the ten writes in one message
            "multi": 0,
            "exec": 0,
        }
        assert a.stats()["announce_pending"] == 0
    finally:
        a.close()


def test_the_worker_sends_after_the_linger(redis_url: str, raw: t.Any) -> None:
    a = make_cache(redis_url, linger=0.05)
    try:
        published = calls(raw, "publish")
        a.set("k", "v")
        assert a.wait_idle(5)
        assert calls(raw, "publish") == published + 1
        assert a.stats()["announce_pending"] == 0
    finally:
        a.close()


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
    apply_message(b, remote_set(b, "other", Entry("x", None, next_version()), None))
    assert b.l1.get("other") is None


def test_a_step_applies_only_on_top_of_the_entry_it_replaced(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    held = Entry("held", None, next_version())
    b.l1.set_entry("k", held)
    other = next_version()
    # A step from another entry (delivered late, or ahead of the steps before it) evicts.
    assert apply_message(b, remote_set(b, "k", Entry("x", None, next_version()), other)) == 0
    assert b.l1.get("k") is None
    # A step whose replaced entry is unknown evicts too.
    b.l1.set_entry("k", held)
    assert apply_message(b, remote_set(b, "k", Entry("x", None, next_version()), None)) == 0
    assert b.l1.get("k") is None
    # A step from exactly the held entry replaces it, whatever the versions' order.
    b.l1.set_entry("k", held)
    older_stamp = Entry("newer", None, held.version - 10**9)
    assert apply_message(b, remote_set(b, "k", older_stamp, held.version)) == 1
    assert b.l1.get("k") == "newer"
    # The same step again leaves the same copy.
    apply_message(b, remote_set(b, "k", older_stamp, held.version))
    assert b.l1.get("k") == "newer"


def test_version_zero_names_no_step(pair: tuple[TieredCache, TieredCache]) -> None:
    _, b = pair
    b.l1.set_entry("k", Entry("unstamped", None, 0))
    assert apply_message(b, remote_set(b, "k", Entry("x", None, next_version()), 0)) == 0
    assert b.l1.get("k") is None
    held = Entry("held", None, next_version())
    b.l1.set_entry("k", held)
    assert apply_message(b, remote_set(b, "k", Entry("x", None, 0), held.version)) == 0
    assert b.l1.get("k") is None


def test_an_update_does_not_hide_a_local_write_stamped_before_it(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    a, _ = pair
    held = Entry("p", None, next_version())
    a.l1.set_entry("k", held)
    tokens = a.ordering.begin_read(["k"])  # a batch read keeps the key's state alive
    try:
        ours = Entry("a", None, next_version())  # set() stamped its version, then paused
        theirs = Entry("b", None, next_version())
        assert apply_message(a, remote_set(a, "k", theirs, held.version)) == 1
        a.write_entries({"k": ours}, a.timer(), ours.version)  # set() goes on
        assert a.l1.get("k") == "a"  # L2 holds ours too: L1 must not keep theirs
        assert t.cast(RedisBackend, a.l2).get("k") == "a"
    finally:
        a.ordering.end_read(["k"], tokens)


def test_steps_delivered_out_of_order_never_leave_a_stale_copy(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    v0, v1, v2 = (Entry(f"v{i}", None, next_version()) for i in range(3))
    first = remote_set(b, "k", v1, v0.version)
    second = remote_set(b, "k", v2, v1.version)
    b.l1.set_entry("k", v0)
    apply_message(b, second)  # arrives first: not a step from v0
    assert b.l1.get("k") is None
    apply_message(b, first)  # not held any more: ignored
    assert b.l1.get("k") is None
    b.l1.set_entry("k", v0)  # in order, both steps apply
    apply_message(b, first)
    apply_message(b, second)
    assert b.l1.get("k") == "v2"


def test_a_write_reports_the_version_it_replaced(redis_url: str, raw: t.Any) -> None:
    backend = RedisBackend.from_url(redis_url, prefix="swap:")
    try:
        first = Entry("a", None, next_version())
        second = Entry("b", None, next_version())
        assert backend.swap_entries({"k": first})["k"][1] is None
        data, previous = backend.swap_entries({"k": second})["k"]
        assert previous == first.version
        assert backend.codec.decode(data).value == "b"
        raw.set("swap:other", b"not an envelope")
        assert backend.swap_entries({"other": first})["other"][1] is None
        raw.delete("swap:list")
        raw.rpush("swap:list", "x")  # another type: written over, nothing known
        assert backend.swap_entries({"list": first})["list"][1] is None
        assert backend.get("list") == "a"
    finally:
        backend.clear()
        backend.close()


def test_an_expired_or_forged_entry_evicts(pair: tuple[TieredCache, TieredCache]) -> None:
    _, b = pair
    b.l1.set_entry("k", Entry("held", None, 1))
    expired = Entry("gone", b.timer() - 1, next_version())
    apply_message(b, remote_set(b, "k", expired, 1))
    assert b.l1.get("k") is None
    b.l1.set_entry("k", Entry("held", None, 1))
    apply_message(b, Message(False, "set", ["k"], 2, {"k": b"not an envelope"}, {"k": 1}))
    assert b.l1.get("k") is None


def test_a_local_write_in_flight_or_a_pending_replay_evicts_instead(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    b.l1.set_entry("k", Entry("held", None, 1))
    with b.ordering.write(["k"], next_version()):  # a local write of k is under way
        apply_message(b, remote_set(b, "k", Entry("theirs", None, next_version()), 1))
        assert b.l1.get("k") is None


def test_entries_without_the_replaced_version_only_evict(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    codec = t.cast(RedisBackend, b.l2).codec
    b.l1.set_entry("k", Entry("held", None, 1))
    carried = {"k": codec.encode(Entry("theirs", None, next_version()))}
    assert apply_message(b, Message(False, "set", ["k"], 2, carried)) == 0
    assert b.l1.get("k") is None


def test_a_refill_in_flight_is_skipped_after_an_update(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    _, b = pair
    token = b.ordering.begin_read_one("k")
    b.l1.set_entry("k", Entry("held", None, 1))
    apply_message(b, remote_set(b, "k", Entry("theirs", None, next_version()), 1))
    assert not b.ordering.refill_allowed(token)
    b.ordering.end_read_one("k", token)


def test_the_announcement_is_sent_only_when_the_write_landed(
    pair: tuple[TieredCache, TieredCache], raw: t.Any
) -> None:
    a, b = pair
    a.set("k", "v1")
    assert b.get("k") == "v1"
    assert a.wait_idle(5)
    published = calls(raw, "publish")
    raw.config_set("maxmemory", "1")
    raw.config_set("maxmemory-policy", "noeviction")
    try:
        with pytest.raises(BackendError):
            a.set("k", "v2")  # OOM: the write fails, and nothing is announced
    finally:
        raw.config_set("maxmemory", "0")
    assert a.stats()["announce_pending"] == 0
    assert a.wait_idle(5)
    assert calls(raw, "publish") == published
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


def test_the_entries_and_steps_are_fields_of_the_same_message() -> None:
    import json

    from tieredcache.backplane import decode_message
    from tieredcache.backplane import encode_message

    message = encode_message("o1", "set", 5, ["k", "j"], {"k": b"TC..."}, {"k": 3, "j": 4})
    decoded = json.loads(message)
    assert decoded == {
        "o": "o1",
        "k": "set",
        "v": 5,
        "keys": ["k", "j"],
        "e": {"k": "VEMuLi4="},
        "p": {"k": 3},
    }
    assert decode_message(message) == ("o1", "set", ["k", "j"], 5, {"k": b"TC..."}, {"k": 3})
    # Too large to carry: the key is announced for eviction only.
    decoded = json.loads(encode_message("o1", "set", 5, ["k"], {"k": b"x" * 2000}, {"k": 3}))
    assert "e" not in decoded and "p" not in decoded
    # Without "p", entries are carried but steps are unknown.
    legacy = json.dumps({"o": "o", "k": "set", "v": 1, "keys": ["k"], "e": {"k": "VEMuLi4="}})
    assert decode_message(legacy)[5] is None


def test_a_key_of_another_type_in_a_batch_is_written_alone(redis_url: str, raw: t.Any) -> None:
    backend = RedisBackend.from_url(redis_url, prefix="swapb:")
    try:
        first = Entry("a", None, next_version())
        backend.swap_entries({"k": first})
        raw.delete("swapb:list")
        raw.rpush("swapb:list", "x")
        sets = calls(raw, "set")
        second, third = Entry("b", None, next_version()), Entry("c", None, next_version())
        swapped = backend.swap_entries({"k": second, "list": third})
        assert swapped["k"][1] == first.version and swapped["list"][1] is None
        assert calls(raw, "set") - sets == 3  # both with GET, then the list's key alone
        assert backend.get("k") == "b" and backend.get("list") == "c"
    finally:
        backend.clear()
        backend.close()


def test_a_write_the_server_refuses_raises(redis_url: str, raw: t.Any) -> None:
    from tieredcache.errors import BackendResponseError

    backend = RedisBackend.from_url(redis_url, prefix="swapo:")
    try:
        raw.config_set("maxmemory", "1")
        raw.config_set("maxmemory-policy", "noeviction")
        try:
            with pytest.raises(BackendResponseError):
                backend.swap_entries({"k": Entry("a", None, next_version())})
        finally:
            raw.config_set("maxmemory", "0")
        # A refusal is not a missing command: the next writes still learn what they replaced.
        first = Entry("a", None, next_version())
        backend.swap_entries({"k": first})
        replaced = backend.swap_entries({"k": Entry("b", None, next_version())})["k"][1]
        assert replaced == first.version
    finally:
        backend.clear()
        backend.close()


def test_a_local_write_in_flight_of_a_key_not_held_does_not_land_in_l1_after_a_step(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    from tieredcache.tiered.ordering import L1

    a, _ = pair
    ours = Entry("mine", None, next_version())
    with a.ordering.write(["k"], ours.version) as slot:  # our write began; its legs wait
        theirs = Entry("theirs", None, next_version())  # written over ours in L2
        apply_message(a, remote_set(a, "k", theirs, ours.version))
        slot.run(L1, lambda live: a.l1.set_entries({key: ours for key in live}))
    assert a.l1.get("k") is None  # our L1 leg came too late: no copy rather than ours


def test_every_message_begins_with_its_origin() -> None:
    from tieredcache.backplane import encode_message
    from tieredcache.backplane import message_prefix

    for origin in ("o1", 'we"ird\\', "ünï"):
        for kind, keys in (("set", ["k"]), ("clear", []), ("delete", ["a", "b"])):
            message = encode_message(origin, kind, 3, keys, {"k": b"TC"}, {"k": 1})
            assert message.startswith(message_prefix(origin))
            assert not message.startswith(message_prefix(origin + "x"))
