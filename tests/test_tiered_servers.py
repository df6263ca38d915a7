"""TieredCache on real servers: the composition's promises with Redis and memcached behind it.

Every layer here is a real backend talking to a server the test session started (see
``conftest.py``); nothing fakes Redis or memcached. The failure tests stop, kill and restart a
Redis of their own (``fresh_redis_server``), so a loser's write really is in flight to a server
that cannot answer.

Sections: round trips, refill and expiry, racing writes against a stopped server, failing
layers, nesting, saturation, memcached's item limit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import typing as t
import warnings

import pytest
import redis

from tieredcache import Backend
from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import Entry
from tieredcache import EntryCodec
from tieredcache import MemcachedBackend
from tieredcache import MemoryBackend
from tieredcache import OptimisticParallelWrite
from tieredcache import ParallelRead
from tieredcache import RaceWrite
from tieredcache import RedisBackend
from tieredcache import Refill
from tieredcache import SequentialWrite
from tieredcache import SerializationError
from tieredcache import SQLiteBackend
from tieredcache import ThreadPoolOffload
from tieredcache import TieredCache
from tieredcache import ValueTooLargeError
from tieredcache.entry import next_version
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.servers import RedisServer

#: Seconds any bounded wait in this module may take before the test fails instead of hanging.
PATIENCE = 15.0

# == helpers ===================================================================================


@pytest.fixture
def stack() -> t.Iterator[contextlib.ExitStack]:
    """Everything a test opens goes on this stack and is closed in reverse order."""
    with contextlib.ExitStack() as resources:
        yield resources


def new_executor(stack: contextlib.ExitStack, workers: int) -> concurrent.futures.Executor:
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="test-io")
    stack.callback(executor.shutdown, wait=True)
    return executor


def new_offload(stack: contextlib.ExitStack, workers: int = 2) -> ThreadPoolOffload:
    offload = ThreadPoolOffload(workers)
    stack.callback(offload.close, wait=True)
    return offload


def compose(stack: contextlib.ExitStack, l1: Backend, l2: Backend, **options: t.Any) -> TieredCache:
    """A composition closed (drained, then both layers closed) when the test ends."""
    return stack.enter_context(TieredCache(l1, l2, **options))


def raw_value(url: str, key: bytes) -> t.Any:
    """The value Redis holds under ``key``, read with a client of its own (``None``: none)."""
    with redis.Redis.from_url(url) as client:
        data = client.get(key)
    return None if data is None else EntryCodec().decode(data).value


def run_threads(
    target: t.Callable[[int], None], count: int, timeout: float = PATIENCE
) -> list[BaseException]:
    """Run ``target(i)`` on ``count`` threads started together; return what they raised.

    The threads are daemons only so that a deadlock fails this test instead of hanging the
    interpreter at exit.
    """
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait(PATIENCE)
            target(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"threads still running after {timeout} s (deadlock?): {stuck}"
    return errors


L2_KINDS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("memcached", marks=pytest.mark.memcached),
]


@pytest.fixture(params=L2_KINDS)
def make_l2(request: pytest.FixtureRequest) -> t.Callable[..., Backend]:
    """Builds the L2 under test, on the session's (flushed) Redis or memcached."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return lambda **options: RedisBackend.from_url(url, prefix="t:", **options)
    servers = request.getfixturevalue("memcached_servers")
    return lambda **options: MemcachedBackend(servers, **options)


# == round trips ===============================================================================


def test_friendly_api_round_trips_through_both_layers(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    l1, l2 = MemoryBackend(), make_l2()
    cache = compose(stack, l1, l2)

    cache.set("a", {"x": 1}, ttl=60)
    assert cache.get("a") == {"x": 1}
    assert l1.get("a") == {"x": 1}
    assert l2.get("a") == {"x": 1}
    assert cache.get("missing") is None
    assert cache.get("missing", default="d") == "d"
    assert cache.has("a") and not cache.has("missing")
    cache.set("none", None)
    assert cache.has("none") and cache.get("none", default="d") is None

    cache.set_many({"b": 2, "c": 3, "d": 4}, ttl=60)
    assert cache.get_many(["b", "c", "d", "missing"]) == {"b": 2, "c": 3, "d": 4}
    assert l2.get_many(["b", "c", "d"]) == {"b": 2, "c": 3, "d": 4}
    assert cache.delete_many(["b", "c", "missing"]) == 2
    assert cache.get_many(["b", "c", "d"]) == {"d": 4}
    assert l1.get("b") is None and l2.get("b") is None

    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert l1.get("a") is None and l2.get("a") is None

    cache.set("n", 10, ttl=60)
    assert cache.incr("n") == 11
    assert cache.incr("n", 5) == 16
    assert cache.decr("n", 6) == 10
    assert cache.get("n") == 10 and l2.get("n") == 10
    with pytest.raises(KeyError):
        cache.incr("missing")

    assert cache.touch("n", ttl=600) is True
    assert cache.touch("missing", ttl=600) is False
    n1, n2 = l1.get_entry("n"), l2.get_entry("n")
    assert n2 is not None and n2.expires_at == pytest.approx(cache.timer() + 600, abs=5)
    assert n1 is None or n1.expires_at == n2.expires_at

    assert cache.add("e", "first", ttl=60) is True
    assert cache.add("e", "second", ttl=60) is False
    assert cache.get("e") == "first" and l2.get("e") == "first"

    calls: list[int] = []

    def loader() -> str:
        calls.append(1)
        return "loaded"

    assert cache.get_or_set("g", loader, ttl=60) == "loaded"
    assert cache.get_or_set("g", loader, ttl=60) == "loaded"
    assert len(calls) == 1
    assert l2.get("g") == "loaded"

    cache.clear()
    for key in ("d", "e", "g", "n", "none"):
        assert cache.get(key) is None
        assert l1.get(key) is None and l2.get(key) is None
    cache._check_invariants()


def test_unserializable_value_leaves_every_layer_unchanged(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    l1, l2 = MemoryBackend(), make_l2()
    cache = compose(stack, l1, l2)
    cache.set("k", "old", ttl=60)
    with pytest.raises(SerializationError):
        cache.set("k", threading.Lock(), ttl=60)  # L1 could hold it; L2 cannot pickle it
    assert l1.get("k") == "old" and l2.get("k") == "old"


def test_delete_many_counts_keys_held_by_either_layer(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    l1, l2 = MemoryBackend(), make_l2()
    cache = compose(stack, l1, l2)
    cache.set_many({"only-l1": 1, "only-l2": 2, "both": 3}, ttl=60)
    l2.delete("only-l1")  # L2 evicted it; this process's L1 still holds it
    l1.delete("only-l2")  # never refilled into L1
    # Each of the three keys held a value in the composition.
    assert cache.delete_many(["only-l1", "only-l2", "both", "missing"]) == 3
    assert cache.get_many(["only-l1", "only-l2", "both"]) == {}


def test_ttl_zero_deletes_from_both_layers(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    l1, l2 = MemoryBackend(), make_l2()
    cache = compose(stack, l1, l2)
    cache.set("k", "v", ttl=60)
    cache.set("k", "gone", ttl=0)
    assert cache.get("k") is None
    assert l1.get("k") is None and l2.get("k") is None


def test_incr_is_atomic_through_the_composition(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    l1, l2 = MemoryBackend(), make_l2()
    cache = compose(stack, l1, l2)
    cache.set("n", 0, ttl=300)

    def bump(_: int) -> None:
        for _ in range(25):
            cache.incr("n")

    assert run_threads(bump, 8) == []
    assert cache.get("n") == 200 and l2.get("n") == 200


def test_get_or_set_runs_the_loader_once(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    cache = compose(stack, MemoryBackend(), make_l2())
    calls: list[int] = []
    results: list[str] = []

    def loader() -> str:
        calls.append(1)
        return "loaded"

    def read(_: int) -> None:
        results.append(cache.get_or_set("k", loader, ttl=60))

    assert run_threads(read, 8) == []
    assert results == ["loaded"] * 8
    assert len(calls) == 1
    assert cache.l2.get("k") == "loaded"


# == refill, l1_ttl, expiry and exact entries ===================================================


def test_l2_hit_refills_l1(make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack) -> None:
    l1, l2 = MemoryBackend(), make_l2()
    cache = compose(stack, l1, l2)
    l2.set("k", "from-l2", ttl=60)  # written behind the composition's back

    assert cache.get("k") == "from-l2"
    figures = cache.stats()
    assert (figures["l2_hits"], figures["l1_hits"], figures["refills"]) == (1, 0, 1)
    assert l1.get_entry("k") == l2.get_entry("k")

    l2_lookups = l2.stats()["hits"] + l2.stats()["misses"]
    assert cache.get("k") == "from-l2"
    figures = cache.stats()
    assert (figures["l2_hits"], figures["l1_hits"]) == (1, 1)
    assert l2.stats()["hits"] + l2.stats()["misses"] == l2_lookups  # L2 was not asked again


def test_another_writer_and_the_read_policies(redis_url: str, stack: contextlib.ExitStack) -> None:
    # Two compositions on one Redis stand for two processes: each has an L1 of its own.
    mine = compose(stack, MemoryBackend(), RedisBackend.from_url(redis_url, prefix="t:"), l1_ttl=60)
    parallel = compose(
        stack,
        MemoryBackend(),
        RedisBackend.from_url(redis_url, prefix="t:"),
        read=ParallelRead(),
    )
    other = compose(stack, MemoryBackend(), RedisBackend.from_url(redis_url, prefix="t:"))
    mine.set("k", "v1", ttl=120)
    parallel.set("k", "v1", ttl=120)
    other.set("k", "v2", ttl=300)  # last writer wins in L2

    assert mine.get("k") == "v1"  # SequentialRead: this L1's copy, until l1_ttl ends it
    assert parallel.get("k") == "v2"  # ParallelRead: L2's entry expires later, so it wins
    assert parallel.l1.get("k") == "v2"  # and it was refilled


def test_l1_ttl_caps_l1_expiry(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    clock = FakeClock()
    l1, l2 = MemoryBackend(timer=clock), make_l2(timer=clock)
    cache = compose(stack, l1, l2, l1_ttl=5, timer=clock)
    start = clock()

    cache.set("long", "v", ttl=300)
    cache.set("short", "v", ttl=2)
    assert t.cast(Entry, l1.get_entry("long")).expires_at == start + 5
    assert t.cast(Entry, l2.get_entry("long")).expires_at == start + 300
    assert t.cast(Entry, l1.get_entry("short")).expires_at == start + 2  # the smaller bound

    now = clock.advance(6)
    assert l1.get("long") is None
    assert cache.get("long") == "v"
    assert cache.stats()["l2_hits"] == 1
    # The refill is capped again, from the time of the refill.
    assert t.cast(Entry, l1.get_entry("long")).expires_at == now + 5
    assert cache.get("short") is None


def test_expiry_through_both_tiers(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    # The fake clock starts at the real time and the TTLs are long, so the servers' own
    # expiry (on real time) never fires here: what expires is the envelope, by the fake clock.
    clock = FakeClock()
    l1, l2 = MemoryBackend(timer=clock), make_l2(timer=clock)
    cache = compose(stack, l1, l2, timer=clock)
    cache.set("k", "v", ttl=100)
    cache.set_many({"m1": 1, "m2": 2}, ttl=100)
    cache.set("forever", "f", ttl=None)

    clock.advance(99.5)
    assert cache.get("k") == "v"
    l1.delete("k")
    assert cache.get("k") == "v"  # from L2, still fresh

    clock.advance(1)
    for layer in (cache, l1, l2):
        assert layer.get("k") is None
        assert layer.get_many(["m1", "m2"]) == {}
        assert not layer.has("m1")
    assert cache.get("forever") == "f" and l2.get("forever") == "f"
    assert cache.stats()["refills"] == 1  # the expired L2 entry was not copied into L1
    assert l1.get_entry("k") is None
    # The server may still hold the bytes, but an expired envelope counts as absent.
    assert cache.add("k", "again", ttl=100) is True
    assert l2.get("k") == "again" and cache.get("k") == "again"


def test_entries_round_trip_exactly(
    make_l2: t.Callable[..., Backend], stack: contextlib.ExitStack
) -> None:
    clock = FakeClock()
    l1, l2 = MemoryBackend(timer=clock), make_l2(timer=clock)
    cache = compose(stack, l1, l2, timer=clock)
    written = {
        "timed": Entry("v", expires_at=clock() + 123.456789, version=next_version()),
        "forever": Entry(["v"], expires_at=None, version=next_version()),
        "stale": Entry(b"v", expires_at=clock() + 60.5, version=7, stale_at=clock() + 30.25),
    }
    for key, entry in written.items():
        cache.set_entry(key, entry)

    for key, entry in written.items():
        assert cache.get_entry(key) == entry  # from L1
        assert l2.get_entry(key) == entry
        l1.delete(key)
        assert cache.get_entry(key) == entry  # from L2
        assert l1.get_entry(key) == entry  # and refilled exactly
    l1.clear()
    assert cache.get_entries(list(written)) == written

    cache.set("friendly", "v", ttl=30)
    assert l1.get_entry("friendly") == l2.get_entry("friendly")


# == racing writes against a stopped Redis ======================================================


def _racing_cache(
    server: RedisServer, stack: contextlib.ExitStack
) -> tuple[TieredCache, RedisBackend, ThreadPoolOffload]:
    offload = new_offload(stack)
    l2 = RedisBackend.from_url(server.url, socket_timeout=10)
    cache = compose(
        stack,
        MemoryBackend(),
        l2,
        write=RaceWrite(),
        offload=offload,
        executor=new_executor(stack, 4),
    )
    # Warm the pool, so that later legs reuse a connected socket rather than connecting to a
    # stopped server.
    cache.set("warm-up", 0)
    assert cache.drain(PATIENCE)
    return cache, l2, offload


def test_race_write_returns_while_redis_is_stopped(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack
) -> None:
    server = fresh_redis_server
    cache, _, offload = _racing_cache(server, stack)
    before = offload.stats()

    server.pause()
    try:
        cache.set("k", "v")  # returns at L1's success; Redis cannot answer yet
        assert server.is_paused()
        assert cache.l1.get("k") == "v"
        assert cache.get("k") == "v"
        assert cache.stats()["in_flight_keys"] == 1
        during = offload.stats()
        assert during.adopted - before.adopted == 1
        assert during.active == 1
    finally:
        server.resume()

    assert cache.drain(PATIENCE) is True
    after = offload.stats()
    assert after.completed - before.completed == 1  # the loser was carried to completion
    assert after.failed == before.failed and after.active == 0
    assert raw_value(server.url, b"k") == "v"
    assert cache.stats()["l2_write_errors"] == 0
    assert cache.stats()["in_flight_keys"] == 0


@pytest.mark.parametrize("later", ["delete", "set"])
def test_loser_in_flight_is_ordered_before_a_later_write(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack, later: str
) -> None:
    server = fresh_redis_server
    cache, l2, _ = _racing_cache(server, stack)
    returned = threading.Event()

    def write_again() -> None:
        if later == "delete":
            cache.delete("k")
        else:
            cache.set("k", "v2")
        returned.set()

    other = threading.Thread(target=write_again, daemon=True)
    server.pause()
    try:
        cache.set("k", "v1")
        # The loser has taken a connection: its SET is on the wire to the stopped server.
        assert wait_until(lambda: l2.stats()["pool_in_use"] >= 1, PATIENCE)
        other.start()
        if later == "delete":
            # A delete goes to L2 first, and waits for the loser to land before it is sent.
            assert not returned.wait(0.3)
        else:
            # A racing set returns at L1's success; its L2 leg queues behind the loser.
            assert returned.wait(PATIENCE)
            assert cache.l1.get("k") == "v2"
        # Nothing of the later write went out while the loser was in flight: it never took a
        # second connection. (Sent anyway, it could overtake the loser at the server.)
        assert not wait_until(lambda: l2.stats()["pool_in_use"] >= 2, 0.3)
    finally:
        server.resume()
    other.join(PATIENCE)
    assert not other.is_alive() and returned.is_set()
    assert cache.drain(PATIENCE) is True

    expected = None if later == "delete" else "v2"
    assert raw_value(server.url, b"k") == expected
    assert cache.get("k") == expected
    assert cache.l1.get("k") == expected
    assert cache.stats()["in_flight_keys"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_a_loser_is_in_flight(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack
) -> None:
    # A pre-forking server may fork while a racing write's loser is still in flight. The
    # child has none of the parent's threads, so nothing there will ever finish that leg:
    # a later write of the key in the child must not wait for it.
    server = fresh_redis_server
    cache, l2, _ = _racing_cache(server, stack)
    server.pause()
    try:
        cache.set("k", "v1")
        assert wait_until(lambda: l2.stats()["pool_in_use"] >= 1, PATIENCE)
        with warnings.catch_warnings():
            # Python 3.12+ warns about forking a process that runs threads.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report through the exit status, never return into pytest
            status = 3
            try:
                deleted = threading.Event()

                def delete() -> None:
                    cache.delete("k")
                    deleted.set()

                threading.Thread(target=delete, daemon=True).start()
                status = 0 if deleted.wait(3) else 1
            finally:
                os._exit(status)
    finally:
        server.resume()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "delete() in the forked child hung"
    assert cache.drain(PATIENCE) is True


# == failing layers ==============================================================================


def test_sequential_write_raises_when_redis_is_down(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack
) -> None:
    server = fresh_redis_server
    l1, l2 = MemoryBackend(), RedisBackend.from_url(server.url)
    cache = compose(stack, l1, l2, write=SequentialWrite())
    cache.set("k", "v0")

    server.kill()
    with pytest.raises(BackendUnavailableError) as caught:
        cache.set("k", "v1")
    assert caught.value.tier == "l2" and caught.value.backend == "redis"
    # The documented inconsistency: L1 keeps the new value the L2 write never stored.
    assert l1.get("k") == "v1"
    assert cache.get("k") == "v1"

    server.restart()
    cache.set("k", "v2")
    assert l2.get("k") == "v2" and l1.get("k") == "v2"
    assert raw_value(server.url, b"k") == "v2"


def test_sequential_write_times_out_on_a_stuck_redis(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack
) -> None:
    server = fresh_redis_server
    l1, l2 = MemoryBackend(), RedisBackend.from_url(server.url, socket_timeout=0.3)
    cache = compose(stack, l1, l2)
    cache.set("k", "v0")
    server.pause()
    try:
        with pytest.raises(BackendTimeoutError) as caught:
            cache.set("k", "v1")
        assert caught.value.tier == "l2"
        assert isinstance(caught.value, BackendUnavailableError)
        assert l1.get("k") == "v1"
    finally:
        server.resume()
    cache.set("k", "v2")
    assert raw_value(server.url, b"k") == "v2"


def test_race_write_records_a_failed_loser(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack
) -> None:
    server = fresh_redis_server
    l1, l2 = MemoryBackend(), RedisBackend.from_url(server.url)
    cache = compose(
        stack,
        l1,
        l2,
        write=RaceWrite(),
        offload=new_offload(stack),
        executor=new_executor(stack, 2),
    )
    server.kill()
    cache.set("k", "v")  # L1 won the race
    assert l1.get("k") == "v"
    assert cache.drain(PATIENCE) is True
    assert cache.stats()["l2_write_errors"] == 1  # the loser's failure is recorded, not lost


def test_refill_never_and_incr_of_a_key_l2_lost(
    redis_url: str, stack: contextlib.ExitStack
) -> None:
    l1, l2 = MemoryBackend(), RedisBackend.from_url(redis_url, prefix="t:")
    cache = compose(stack, l1, l2, refill=Refill.NEVER)
    l2.set("far", "v", ttl=60)
    assert cache.get("far") == "v"
    assert l1.get("far") is None  # reads never write
    assert cache.stats()["refills"] == 0

    cache.set("n", 5, ttl=60)
    l2.delete("n")  # deleted elsewhere (or evicted); L1 still holds it
    with pytest.raises(KeyError):
        cache.incr("n")  # L2 decides: the key is missing, and is not brought back
    assert l2.get("n") is None
    assert l1.get("n") is None  # L1 dropped its copy; the next read asks L2
    assert cache.get("n") is None


def test_optimistic_parallel_write_absorbs_dead_redis(
    fresh_redis_server: RedisServer, stack: contextlib.ExitStack
) -> None:
    server = fresh_redis_server
    reported: list[tuple[str, list[str], BaseException]] = []
    l1, l2 = MemoryBackend(), RedisBackend.from_url(server.url)
    cache = compose(
        stack,
        l1,
        l2,
        write=OptimisticParallelWrite(),
        executor=new_executor(stack, 2),
        on_partial_failure=lambda tier, keys, exc: reported.append((tier, list(keys), exc)),
    )
    server.kill()

    cache.set("k", "v")  # returns normally: one layer holds the value
    figures = cache.stats()
    assert figures["l2_write_errors"] == 1
    assert figures["l1_write_errors"] == 0
    assert l1.get("k") == "v"
    assert cache.get("k") == "v"  # an L1 hit never asks the dead L2
    [(tier, keys, exc)] = reported
    assert (tier, keys) == ("l2", ["k"])
    assert isinstance(exc, BackendUnavailableError) and exc.tier == "l2"

    # A delete is never reported clean while L2 is down, yet L1's copy is gone.
    with pytest.raises(BackendUnavailableError) as caught:
        cache.delete("k")
    assert caught.value.tier == "l2"
    assert l1.get("k") is None


# == nesting ====================================================================================


def test_three_tier_chain(redis_url: str, tmp_path: t.Any, stack: contextlib.ExitStack) -> None:
    memory = MemoryBackend()
    sqlite = SQLiteBackend(tmp_path / "c.sqlite3")
    far = RedisBackend.from_url(redis_url, prefix="t3:")
    inner = TieredCache(sqlite, far)
    cache = compose(stack, memory, inner)
    leaves = (memory, sqlite, far)

    cache.set("a", 1, ttl=60)
    cache.set_many({"b": 2, "c": 3}, ttl=60)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        assert [leaf.get(key) for leaf in leaves] == [value] * 3
        entries = [leaf.get_entry(key) for leaf in leaves]
        assert entries[0] == entries[1] == entries[2]  # expires_at and version, exactly
    assert raw_value(redis_url, b"t3:a") == 1

    far.set("only-far", "deep", ttl=60)
    assert cache.get("only-far") == "deep"
    assert sqlite.get("only-far") == "deep" and memory.get("only-far") == "deep"
    assert cache.stats()["l2_hits"] == 1 and inner.stats()["l2_hits"] == 1
    assert cache.get("only-far") == "deep"
    assert cache.stats()["l1_hits"] == 1 and inner.stats()["l2_hits"] == 1

    assert cache.delete("a") is True
    assert cache.delete_many(["b", "only-far"]) == 2
    for key in ("a", "b", "only-far"):
        assert [leaf.get(key) for leaf in leaves] == [None] * 3
        assert cache.get(key) is None
    assert [leaf.get("c") for leaf in leaves] == [3] * 3


# == saturation: no deadlock with one I/O worker =================================================


KEYS = [f"key-{i}" for i in range(20)]


def test_saturated_executor_does_not_deadlock(redis_url: str, stack: contextlib.ExitStack) -> None:
    l1 = MemoryBackend()
    l2 = RedisBackend.from_url(redis_url, prefix="sat:")
    cache = compose(
        stack,
        l1,
        l2,
        write=OptimisticParallelWrite(),
        read=ParallelRead(),
        executor=new_executor(stack, 1),
    )

    def work(index: int) -> None:
        for round_ in range(25):
            for key in KEYS[index % 4 :: 4]:
                cache.set(key, (index, round_), ttl=300)
                value = cache.get(key)
                assert isinstance(value, tuple)

    assert run_threads(work, 8) == []
    figures = cache.stats()
    assert figures["l1_write_errors"] == figures["l2_write_errors"] == 0
    # Convergence: each layer ends with the newest write of every key.
    for key in KEYS:
        assert l1.get_entry(key) == l2.get_entry(key), key
    cache._check_invariants()


def test_nested_race_writes_share_one_worker(
    redis_url: str, tmp_path: t.Any, stack: contextlib.ExitStack
) -> None:
    executor = new_executor(stack, 1)
    offload = new_offload(stack)
    memory = MemoryBackend()
    sqlite = SQLiteBackend(tmp_path / "nested.sqlite3")
    far = RedisBackend.from_url(redis_url, prefix="nest:")
    inner = TieredCache(sqlite, far, write=RaceWrite(), executor=executor, offload=offload)
    cache = compose(stack, memory, inner, write=RaceWrite(), executor=executor, offload=offload)

    def work(index: int) -> None:
        for round_ in range(20):
            for key in KEYS[index % 4 :: 4]:
                if round_ % 7 == 6:
                    cache.delete(key)
                else:
                    cache.set(key, (index, round_), ttl=300)
                cache.get(key)

    assert run_threads(work, 8) == []
    assert cache.drain(PATIENCE) is True
    assert offload.stats().failed == 0
    # After the drain, every leaf holds the newest write (or the delete) of every key.
    for key in KEYS:
        entries = [memory.get_entry(key), sqlite.get_entry(key), far.get_entry(key)]
        assert entries[0] == entries[1] == entries[2], key
    cache._check_invariants()
    inner._check_invariants()


# == memcached's item limit ======================================================================


@pytest.mark.parametrize(
    "max_value_size",
    [
        pytest.param(1024 * 1024, id="refused-before-sending"),
        pytest.param(8 * 1024 * 1024, id="refused-by-the-server"),
    ],
)
def test_value_over_memcached_item_limit(
    memcached_servers: list[tuple[str, int]], stack: contextlib.ExitStack, max_value_size: int
) -> None:
    # The session's memcached runs with -I 1m. With max_value_size at that limit the backend
    # refuses the value itself; set above it, the server refuses it.
    l1 = MemoryBackend()
    l2 = MemcachedBackend(memcached_servers, max_value_size=max_value_size)
    cache = compose(stack, l1, l2, write=SequentialWrite())
    cache.set("k", "small", ttl=60)
    big = b"x" * (1024 * 1024 + 1)

    with pytest.raises(ValueTooLargeError) as caught:
        cache.set("k", big, ttl=60)
    assert caught.value.backend == "memcached"
    if max_value_size == 1024 * 1024:
        # Refused before any layer was written: both keep the old value.
        assert l1.get("k") == "small" and l2.get("k") == "small"
        assert cache.get("k") == "small"
    else:
        # Only the server knew its limit. The documented inconsistency of SequentialWrite:
        # L1 keeps the new value; memcached dropped the old item when it refused the new one.
        assert caught.value.tier == "l2"
        assert l1.get("k") == big and l2.get("k") is None
        assert cache.get("k") == big

    cache.set("k", "fits", ttl=60)  # the connection is still usable
    assert l1.get("k") == "fits" and l2.get("k") == "fits"


@pytest.mark.parametrize(
    "write",
    [SequentialWrite(), RaceWrite(), OptimisticParallelWrite()],
    ids=["sequential", "race", "parallel"],
)
def test_a_value_memcached_refuses_writes_no_layer(
    memcached_servers: list[tuple[str, int]], stack: contextlib.ExitStack, write: t.Any
) -> None:
    # The backend knows the item limit (max_value_size): the composition asks it before it
    # writes any layer, so a refused set, or a batch holding one refused value, changes
    # nothing anywhere, whatever the policy, even with an L1 too small for the value.
    l1 = MemoryBackend(max_bytes=500_000)
    l2 = MemcachedBackend(memcached_servers)
    cache = compose(stack, l1, l2, write=write, fail_open=True)
    cache.set_many({"k": "old", "good": "old-good"}, ttl=60)
    big = b"x" * (1024 * 1024 + 1)
    with pytest.raises(ValueTooLargeError):
        cache.set("k", big, ttl=60)
    with pytest.raises(ValueTooLargeError):
        cache.set_many({"good": "new-good", "k": big}, ttl=60)
    assert cache.drain(PATIENCE)
    for key, old in (("k", "old"), ("good", "old-good")):
        assert l1.get(key) == old and l2.get(key) == old
        assert cache.get(key) == old
    assert cache.stats()["replay_pending"] == 0


def test_value_too_large_for_l1_lives_in_l2_only(
    memcached_servers: list[tuple[str, int]], stack: contextlib.ExitStack
) -> None:
    l1 = MemoryBackend(max_bytes=4096)
    l2 = MemcachedBackend(memcached_servers)
    cache = compose(stack, l1, l2, write=SequentialWrite())
    cache.set("k", "small", ttl=60)
    assert l1.get("k") == "small"

    big = b"y" * 10_000
    cache.set("k", big, ttl=60)  # no error: L2 holds it
    assert l1.get("k") is None  # and L1 no longer serves the older copy
    assert l2.get("k") == big
    assert cache.get("k") == big
    figures = cache.stats()
    assert figures["l2_hits"] == 1
    assert figures["refill_errors"] == 1  # the refill could not fit it either; the read still hit
    assert l1.get("k") is None
    l1._check_invariants()
