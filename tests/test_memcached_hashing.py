"""MemcachedBackend hashed over three memcached servers, one of which dies and comes back.

The servers are this module's own (killed and restarted by PID), so nothing else shares them.
Where a key lives is read from the servers themselves with plain pymemcache clients, never
from the backend's hasher: the promise is that a key always lives on the same server, and a
dead server's keys raise instead of moving to another server, where a stale copy could be
served later.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import time
import typing as t

import pytest
from pymemcache.client.base import Client

from tieredcache import BackendUnavailableError
from tieredcache import MemcachedBackend
from tieredcache import MemoryBackend
from tieredcache import OptimisticParallelWrite
from tieredcache import TieredCache
from tieredcache.backends.memcached_servers import listed_keys
from tieredcache.testing.clock import wait_until
from tieredcache.testing.servers import MemcachedServer
from tieredcache.testing.servers import ServerNotInstalledError

pytestmark = pytest.mark.memcached

#: timeout and connect_timeout of the backends, and how long a failing call may take.
FAST = 0.5
BOUND = 4 * FAST
KEYS = [f"key-{i}" for i in range(90)]


@pytest.fixture(scope="module")
def trio() -> t.Iterator[list[MemcachedServer]]:
    """Three memcached servers of the module's own, stopped by PID at the end."""
    servers = [MemcachedServer() for _ in range(3)]
    try:
        for server in servers:
            server.start()
    except ServerNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def servers(trio: list[MemcachedServer]) -> list[MemcachedServer]:
    """The three servers, every one running and empty."""
    for server in trio:
        if not server.is_running():  # a failed test left it down
            server.start()
        with raw_client(server) as client:
            client.flush_all(noreply=False)
    return trio


@pytest.fixture
def make(servers: list[MemcachedServer]) -> t.Iterator[t.Callable[..., MemcachedBackend]]:
    """``make(**options)``: a backend hashed over the three servers, closed at teardown."""
    made: list[MemcachedBackend] = []

    def factory(**options: t.Any) -> MemcachedBackend:
        options.setdefault("timeout", FAST)
        options.setdefault("connect_timeout", FAST)
        backend = MemcachedBackend([server.address for server in servers], **options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


@contextlib.contextmanager
def raw_client(server: MemcachedServer) -> t.Iterator[Client]:
    client = Client(server.address, connect_timeout=5, timeout=5)
    try:
        yield client
    finally:
        client.close()


def item_count(server: MemcachedServer) -> int:
    """The items ``server`` holds, from its own listing (``curr_items`` still counts flushed
    items until the server's crawler reclaims them)."""
    with raw_client(server) as client:
        return len(listed_keys(client))


def placement(backend: MemcachedBackend, servers: list[MemcachedServer]) -> dict[str, int]:
    """``{key: index of the one server that holds it}``, read from the servers themselves."""
    where: dict[str, int] = {}
    for index, server in enumerate(servers):
        with raw_client(server) as client:
            held = client.get_many([backend.server_key(key) for key in KEYS])
        for key in KEYS:
            if backend.server_key(key) in held:
                assert key not in where, f"{key!r} is on two servers"
                where[key] = index
    return where


def fails_fast(
    call: t.Callable[[], object], dead: MemcachedServer, servers: list[MemcachedServer]
) -> None:
    """``call()`` raises BackendUnavailableError at once, naming the dead server only."""
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as info:
        call()
    assert time.monotonic() - started < BOUND
    named = {server.port for server in servers if f"127.0.0.1:{server.port}" in str(info.value)}
    assert named == {dead.port}, str(info.value)


# == spread ====================================================================================


def test_keys_spread_over_every_server(
    make: t.Callable[..., MemcachedBackend], servers: list[MemcachedServer]
) -> None:
    backend = make(prefix="s:")
    backend.set_many({key: key.upper() for key in KEYS})

    counts = [item_count(server) for server in servers]
    assert sum(counts) == len(KEYS)
    assert all(count >= len(KEYS) // 10 for count in counts), counts
    where = placement(backend, servers)
    assert sorted(where) == sorted(KEYS)  # each key on exactly one server
    assert [list(where.values()).count(i) for i in range(3)] == counts

    assert all(backend.get(key) == key.upper() for key in KEYS)
    assert backend.get_many([*KEYS, "missing"]) == {key: key.upper() for key in KEYS}
    # Another backend over the same servers finds every key: the mapping is a function of
    # the key and the server list, not of the backend's history.
    assert make(prefix="s:").get_many(KEYS) == {key: key.upper() for key in KEYS}


# == a server dies ============================================================================


def test_dead_server_raises_for_its_keys_and_never_remaps(
    make: t.Callable[..., MemcachedBackend], servers: list[MemcachedServer]
) -> None:
    backend = make()
    backend.set_many({key: "old" for key in KEYS})
    where = placement(backend, servers)
    dead = servers[1]
    lost = [key for key in KEYS if where[key] == 1]
    kept = [key for key in KEYS if where[key] != 1]

    dead.kill()

    # Far more failures than HashClient needs to drop a server from its ring (3 by default).
    for _ in range(5):
        for key in lost[:4]:
            fails_fast(functools.partial(backend.get, key), dead, servers)
            fails_fast(functools.partial(backend.set, key, "new"), dead, servers)
        fails_fast(lambda: backend.delete(lost[4]), dead, servers)
        fails_fast(lambda: backend.add(lost[5], "new"), dead, servers)
        fails_fast(lambda: backend.get_many(KEYS), dead, servers)
    # The other servers' keys still work, and none of the dead server's keys moved there.
    assert backend.get_many(kept) == {key: "old" for key in kept}
    backend.set_many({key: "new" for key in kept[:10]})
    assert backend.get_many(kept[:10]) == {key: "new" for key in kept[:10]}
    assert item_count(servers[0]) + item_count(servers[2]) == len(kept)
    stats = backend.stats()
    assert stats["errors"] >= 5 * 8

    dead.start()  # the same port; the items died with the process

    # A miss, not an error, and not an old value from somewhere else.
    assert wait_until(lambda: _answers(backend, lost[0]), 5.0)
    assert backend.get_many(lost) == {}
    backend.set(lost[0], "after restart")
    assert backend.get(lost[0]) == "after restart"
    assert placement(backend, servers)[lost[0]] == 1
    assert item_count(dead) == 1
    assert backend.get_many(kept) == {key: "new" if key in kept[:10] else "old" for key in kept}


def _answers(backend: MemcachedBackend, key: str) -> bool:
    try:
        return backend.get(key) is None
    except BackendUnavailableError:
        return False


# == a composition over the ring ===============================================================


def test_parallel_write_absorbs_the_dead_server(
    make: t.Callable[..., MemcachedBackend], servers: list[MemcachedServer]
) -> None:
    l2 = make(prefix="t:")
    l2.set_many({key: "probe" for key in KEYS})
    where = placement(l2, servers)
    l2.clear()
    dead = servers[2]
    lost = [key for key in KEYS if where[key] == 2][:5]
    kept = [key for key in KEYS if where[key] != 2][:5]
    reported: list[tuple[str, t.Sequence[str], BaseException]] = []
    with contextlib.ExitStack() as stack:
        executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(2))
        cache = stack.enter_context(
            TieredCache(
                MemoryBackend(),
                l2,
                write=OptimisticParallelWrite(),
                executor=executor,
                on_partial_failure=lambda tier, keys, exc: reported.append((tier, keys, exc)),
            )
        )
        dead.kill()
        # The live servers' keys first: a run of failures may open the L2's breaker.
        for key in kept + lost:
            started = time.monotonic()
            cache.set(key, f"value of {key}")  # returns normally: L1 holds the value
            assert time.monotonic() - started < BOUND

        figures = cache.stats()
        assert figures["l2_write_errors"] == len(lost)
        assert figures["l1_write_errors"] == 0
        assert [(tier, keys) for tier, keys, _ in reported] == [("l2", [key]) for key in lost]
        assert all(isinstance(exc, BackendUnavailableError) for _, _, exc in reported)
        for key in lost + kept:
            assert cache.l1.get(key) == f"value of {key}"
            assert cache.get(key) == f"value of {key}"
        assert l2.get_many(kept) == {key: f"value of {key}" for key in kept}
