"""MemcachedBackend: the contract on a real server, plus what memcached adds or forbids."""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
import typing as t
import warnings

import pytest
from pymemcache.client.base import Client
from pymemcache.client.base import PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheClientError
from pymemcache.exceptions import MemcacheIllegalInputError
from pymemcache.exceptions import MemcacheServerError
from pymemcache.exceptions import MemcacheUnexpectedCloseError
from pymemcache.exceptions import MemcacheUnknownCommandError
from pymemcache.exceptions import MemcacheUnknownError

from tieredcache import BackendResponseError
from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import ConfigurationError
from tieredcache import SignedSerializer
from tieredcache import ValueTooLargeError
from tieredcache.backends.memcached import MemcachedBackend
from tieredcache.backends.memcached_servers import listed_keys
from tieredcache.breaker import is_availability_failure
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.contract import BackendContract
from tieredcache.testing.servers import MemcachedServer
from tieredcache.testing.servers import free_port

Address = tuple[str, int]

#: The contract runs once per variant: (key prefix, serializer factory or None for pickle).
VARIANTS: dict[str, tuple[str, t.Callable[[], t.Any] | None]] = {
    "no-prefix-pickle": ("", None),
    "prefix-pickle": ("app:", None),
    "prefix-signed": ("app:", lambda: SignedSerializer("secret")),
}

MIB = 1024 * 1024


@pytest.fixture
def open_backends() -> t.Iterator[list[MemcachedBackend]]:
    """Backends made by a test, closed at teardown."""
    made: list[MemcachedBackend] = []
    yield made
    for backend in made:
        backend.close()


@pytest.fixture
def make(open_backends: list[MemcachedBackend]) -> t.Callable[..., MemcachedBackend]:
    def factory(servers: t.Any = None, **options: t.Any) -> MemcachedBackend:
        backend = MemcachedBackend(servers, **options)
        open_backends.append(backend)
        return backend

    return factory


def raw_client(address: Address) -> Client:
    """A plain pymemcache client that sees the server's bytes; close it after use."""
    return Client(address, connect_timeout=5, timeout=5, default_noreply=False)


@pytest.fixture
def raw(memcached_servers: list[Address]) -> t.Iterator[Client]:
    client = raw_client(memcached_servers[0])
    try:
        yield client
    finally:
        client.close()


def server_ttl(client: Client, server_key: str) -> int | None:
    """The item's remaining TTL as the server sees it (-1: none), or None when it is gone.

    Uses the meta protocol (``mg <key> t``), which reports the TTL without changing it.
    """
    reply = client.raw_command(f"mg {server_key} t".encode("ascii"), b"\r\n")
    if reply == b"EN":
        return None
    match = re.fullmatch(rb"HD t(-?\d+)", reply)
    assert match is not None, reply
    return int(match.group(1))


def ttl_when_stored(client: Client, store: t.Callable[[], object], server_key: str) -> int | None:
    """:func:`server_ttl` right after ``store()``, read within one tick of the server's clock
    (which counts whole seconds): tried again if the clock ticked meanwhile."""
    while True:
        before = client.stats()[b"time"]
        store()
        remaining = server_ttl(client, server_key)
        if client.stats()[b"time"] == before:
            return remaining


def pause(server: MemcachedServer) -> None:
    """Pause ``server`` and wait until every thread of it has stopped.

    SIGSTOP takes effect when the kernel next schedules the process, so a request sent at
    once may still be answered; on Linux, ``/proc`` tells when every thread is stopped.
    """
    server.pause()
    tasks = f"/proc/{server.pid}/task"
    if not os.path.isdir(tasks):
        return

    def stopped() -> bool:
        states = []
        for task in os.listdir(tasks):
            try:
                with open(f"{tasks}/{task}/stat", "rb") as stat:
                    states.append(stat.read().rsplit(b")", 1)[1].split()[0])
            except FileNotFoundError:
                continue
        return bool(states) and all(state in (b"T", b"t") for state in states)

    assert wait_until(stopped), f"{server!r} did not stop"


class TestMemcachedBackend(BackendContract):
    @pytest.fixture(params=list(VARIANTS))
    def make_backend(
        self,
        request: pytest.FixtureRequest,
        memcached_servers: list[Address],
        open_backends: list[MemcachedBackend],
    ) -> t.Callable[..., MemcachedBackend]:
        prefix, serializer = VARIANTS[request.param]

        def factory(**options: t.Any) -> MemcachedBackend:
            if serializer is not None:
                options.setdefault("serializer", serializer())
            backend = MemcachedBackend(memcached_servers, prefix=prefix, **options)
            open_backends.append(backend)
            return backend

        return factory

    def write_raw(self, backend: MemcachedBackend, key: str, data: bytes) -> None:  # type: ignore[override]
        client = raw_client(backend.servers[0])  # type: ignore[arg-type]
        try:
            assert client.set(backend.server_key(key), data, noreply=False)
        finally:
            client.close()


# -- keys ---------------------------------------------------------------------------------


def test_forbidden_keys_round_trip_and_stay_distinct(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    backend = make(memcached_servers)
    long_key = "x" * 300
    keys = [
        long_key,
        "a key with spaces",
        "tab\tkey",
        "new\nline",
        "ctl\x01char",
        "del\x7fchar",
        "unic\u00f8de \u2603",
        "",
        "tc:h:legal-but-reserved",
        backend.server_key(long_key),  # a legal key that looks like a hashed one
        "y" * 250,  # the longest legal key
    ]
    for i, key in enumerate(keys):
        backend.set(key, i)
    assert [backend.get(key) for key in keys] == list(range(len(keys)))
    assert backend.get_many(keys) == {key: i for i, key in enumerate(keys)}

    server_keys = [backend.server_key(key) for key in keys]
    assert len(set(server_keys)) == len(keys)
    for server_key in server_keys:
        assert re.fullmatch(r"[\x21-\x7e]{1,250}", server_key), server_key
    assert backend.server_key("y" * 250) == "y" * 250
    assert backend.server_key("user:42") == "user:42"
    assert backend.server_key("tc:h:legal-but-reserved").startswith("tc:h:")
    assert backend.server_key("tc:h:legal-but-reserved") != "tc:h:legal-but-reserved"
    assert raw.get("y" * 250) is not None  # legal keys are stored under their own name
    assert raw.get(backend.server_key(long_key)) is not None

    assert backend.delete_many(keys) == len(keys)
    assert backend.get_many(keys) == {}


def test_prefix_counts_towards_the_key_limit(make: t.Callable[..., MemcachedBackend]) -> None:
    backend = make(("127.0.0.1", 1), prefix="app:")
    assert backend.server_key("k" * 246) == "app:" + "k" * 246
    assert backend.server_key("k" * 247).startswith("tc:h:")
    assert make(("127.0.0.1", 1), prefix="my app:").server_key("k").startswith("tc:h:")


# -- expiry on the server ----------------------------------------------------------------


def test_server_ttl_is_whole_seconds_rounded_up(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    backend = make(memcached_servers)
    key = backend.server_key

    backend.set("forever", "v", ttl=None)
    assert server_ttl(raw, key("forever")) == -1

    # memcached's clock ticks once a second and counts an expiry from its last tick: an item
    # is stored for one second more than its TTL rounded up, so it outlives its TTL.
    cases = [("sub-second", 0.25, 2), ("one", 1, 2), ("fraction", 2.5, 4), ("whole", 10, 11)]
    for name, ttl, expected in cases:
        stored = ttl_when_stored(raw, functools.partial(backend.set, name, "v", ttl), key(name))
        assert stored == expected, name

    # Beyond 30 days memcached reads an absolute unix time; the remaining TTL still matches,
    # give or take the server's coarse clock.
    forty_days = 40 * 86400
    backend.set("long", "v", ttl=forty_days)
    remaining = server_ttl(raw, key("long"))
    assert remaining is not None
    assert abs(remaining - forty_days) <= 3


def test_server_ttl_follows_the_backend_clock_not_its_epoch(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    clock = FakeClock(time.time() + 5 * 365 * 86400)  # years ahead of the server
    backend = make(memcached_servers, timer=clock)
    server_key = backend.server_key("k")
    assert ttl_when_stored(raw, functools.partial(backend.set, "k", "v", 20), server_key) == 21


def test_sub_second_ttl_expires_on_the_server(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    backend = make(memcached_servers)
    backend.set("k", "v", ttl=0.25)
    assert wait_until(lambda: raw.get(backend.server_key("k")) is None, timeout=5)
    assert backend.get("k") is None


def test_incr_and_touch_set_the_server_expiry(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    backend = make(memcached_servers)
    server_key = backend.server_key("n")
    backend.set("n", 1, ttl=100)
    results: list[int] = []  # incr again if the server's clock ticked meanwhile
    assert ttl_when_stored(raw, lambda: results.append(backend.incr("n", 2**70)), server_key) == 101
    assert results[-1] == len(results) * 2**70 + 1
    assert ttl_when_stored(raw, functools.partial(backend.touch, "n", ttl=500), server_key) == 501
    assert backend.touch("n", ttl=None) is True
    assert server_ttl(raw, server_key) == -1
    assert backend.get_entry("n").expires_at is None  # type: ignore[union-attr]
    assert backend.get("n") == results[-1]


def test_corrupt_item_is_absent_for_add_incr_and_touch(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    backend = make(memcached_servers)
    for key in ("a", "i", "t"):
        assert raw.set(backend.server_key(key), b"not an envelope", noreply=False)
    assert backend.touch("t", ttl=10) is False
    with pytest.raises(KeyError):
        backend.incr("i")
    assert backend.add("a", "fresh") is True
    assert backend.get("a") == "fresh"
    assert backend.stats()["corrupt"] == 3


# -- size limit -----------------------------------------------------------------------------


def test_oversized_value_is_refused_before_sending(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address]
) -> None:
    backend = make(memcached_servers, max_value_size=1000)
    backend.set("k", "old")
    with pytest.raises(ValueTooLargeError, match=r"is \d+ bytes .* limit is 1000 bytes") as info:
        backend.set("k", b"x" * 2000)
    assert isinstance(info.value, BackendResponseError)
    assert info.value.backend == "memcached"
    assert backend.get("k") == "old"

    with pytest.raises(ValueTooLargeError):
        backend.set_many({"a": 1, "k": b"x" * 2000})
    assert backend.get("a") is None
    assert backend.get("k") == "old"

    with pytest.raises(ValueTooLargeError):
        backend.add("new", b"x" * 2000)
    assert not backend.has("new")

    backend.set("fits", b"x" * 500)
    assert backend.get("fits") == b"x" * 500


def test_server_refusing_a_large_value_is_a_response_error(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address]
) -> None:
    # The session's server takes items of up to 1 MiB; the backend is told otherwise.
    backend = make(memcached_servers, max_value_size=8 * MIB)
    with pytest.raises(ValueTooLargeError, match="too large") as info:
        backend.set("big", b"x" * (2 * MIB))
    assert isinstance(info.value.__cause__, MemcacheServerError)
    backend.set("small", "still works")
    assert backend.get("small") == "still works"


# -- several servers ----------------------------------------------------------------------


@pytest.fixture
def two_servers(
    memcached_servers: list[Address], fresh_memcached_server: MemcachedServer
) -> list[Address]:
    return [memcached_servers[0], fresh_memcached_server.address]


def test_keys_spread_over_two_servers(
    make: t.Callable[..., MemcachedBackend], two_servers: list[Address]
) -> None:
    spec = ",".join(f"{host}:{port}" for host, port in two_servers)
    backend = make(spec)
    assert isinstance(backend.client, HashClient)
    assert backend.servers == two_servers
    keys = [f"key-{i}" for i in range(60)] + ["a key with spaces", "z" * 400]
    values = {key: i for i, key in enumerate(keys)}
    backend.set_many(values, ttl=100)

    held = []
    for address in two_servers:
        client = raw_client(address)
        try:
            held.append(set(client.get_many([backend.server_key(key) for key in keys])))
        finally:
            client.close()
    assert held[0] and held[1], "every server holds some keys"
    assert held[0].isdisjoint(held[1])
    assert held[0] | held[1] == {backend.server_key(key) for key in keys}

    assert {key: backend.get(key) for key in keys} == values
    assert backend.get_many([*keys, "missing"]) == values
    assert backend.add(keys[0], "other") is False
    assert backend.incr(keys[1], 10) == 11
    assert backend.touch(keys[2], ttl=None) is True
    assert backend.delete_many([*keys[:10], "missing"]) == 10

    backend.clear()
    assert backend.get_many(keys) == {}


def test_dead_server_in_a_ring_fails_its_keys_only(
    make: t.Callable[..., MemcachedBackend],
    two_servers: list[Address],
    fresh_memcached_server: MemcachedServer,
) -> None:
    backend = make(two_servers)
    keys = [f"key-{i}" for i in range(20)]
    backend.set_many({key: key for key in keys})
    client = raw_client(fresh_memcached_server.address)
    try:
        on_fresh = set(client.get_many([backend.server_key(key) for key in keys]))
    finally:
        client.close()
    assert on_fresh
    fresh_memcached_server.kill()
    for key in keys:
        if backend.server_key(key) in on_fresh:
            # Every call raises: no silent miss, and the key never moves to the other server.
            for _ in range(3):
                with pytest.raises(BackendUnavailableError):
                    backend.get(key)
            with pytest.raises(BackendUnavailableError):
                backend.set(key, "moved?")
        else:
            assert backend.get(key) == key


# -- failures -------------------------------------------------------------------------------


def test_refused_connection_is_unavailable(make: t.Callable[..., MemcachedBackend]) -> None:
    backend = make(("127.0.0.1", free_port()))
    calls: list[t.Callable[[], t.Any]] = [
        lambda: backend.get("k"),
        lambda: backend.set("k", 1),
        lambda: backend.get_many(["a", "b"]),
        lambda: backend.add("k", 1),
        lambda: backend.incr("k"),
        lambda: backend.delete("k"),
        backend.clear,
    ]
    for call in calls:
        with pytest.raises(BackendUnavailableError) as info:
            call()
        assert not isinstance(info.value, BackendTimeoutError)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        assert info.value.backend == "memcached"
    assert backend.stats()["errors"] == 3  # one for the get, one per key of get_many


def test_killed_server_is_unavailable_then_recovers(
    make: t.Callable[..., MemcachedBackend], fresh_memcached_server: MemcachedServer
) -> None:
    backend = make(fresh_memcached_server.address)
    backend.set("k", "v")  # leaves an open connection in the pool
    fresh_memcached_server.kill()
    with pytest.raises(BackendUnavailableError) as info:
        backend.get("k")
    assert isinstance(info.value.__cause__, (OSError, MemcacheUnexpectedCloseError))
    with pytest.raises(BackendUnavailableError) as info:
        backend.get("k")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)

    fresh_memcached_server.start()
    assert backend.get("k") is None  # a new memcached starts empty
    backend.set("k", "again")
    assert backend.get("k") == "again"


def test_a_restart_costs_no_call_the_pools_dropped_connections(
    make: t.Callable[..., MemcachedBackend], fresh_memcached_server: MemcachedServer
) -> None:
    # The pool holds eight idle connections when the server restarts: each is dropped, and
    # a call that takes one makes its command again on another, then on a new connection.
    backend = make(fresh_memcached_server.address)
    pool = backend.client.client_pool
    held = [pool.get() for _ in range(8)]
    for connection in held:
        connection.version()
    for connection in held:
        pool.release(connection)
    fresh_memcached_server.kill()
    fresh_memcached_server.start()
    for i in range(8):
        assert backend.get(f"k{i}") is None  # a new memcached starts empty
    backend.set("k", "again")
    assert backend.get("k") == "again"
    assert backend.stats()["errors"] == 0


def test_paused_server_times_out(
    make: t.Callable[..., MemcachedBackend], fresh_memcached_server: MemcachedServer
) -> None:
    backend = make(fresh_memcached_server.address, timeout=0.3, connect_timeout=0.3)
    backend.set("k", "v")
    pause(fresh_memcached_server)
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError) as info:
            backend.get("k")
        assert time.monotonic() - started < 5
        assert isinstance(info.value, BackendUnavailableError)
        assert isinstance(info.value.__cause__, (socket.timeout, TimeoutError))
    finally:
        fresh_memcached_server.resume()
    assert backend.get("k") == "v"


def test_exhausted_pool_is_unavailable(
    make: t.Callable[..., MemcachedBackend], fresh_memcached_server: MemcachedServer
) -> None:
    backend = make(fresh_memcached_server.address, max_pool_size=1, timeout=5)
    backend.set("k", "v")
    results: list[t.Any] = []

    def hold_the_only_connection() -> None:
        try:
            results.append(backend.get("k"))
        except Exception as exc:
            results.append(exc)

    pause(fresh_memcached_server)
    holder = threading.Thread(target=hold_the_only_connection)
    try:
        holder.start()
        assert wait_until(lambda: len(backend.client.client_pool.used) == 1)
        with pytest.raises(BackendUnavailableError, match="max_pool_size=1") as info:
            backend.get("k")
        assert isinstance(info.value.__cause__, RuntimeError)
    finally:
        fresh_memcached_server.resume()
        holder.join(10)
    assert results == ["v"]


# -- clear, close, fork -------------------------------------------------------------------


def test_clear_empties_the_whole_server(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address], raw: Client
) -> None:
    backend = make(memcached_servers, prefix="app:")
    backend.set("mine", 1)
    assert raw.set("someone-else", b"theirs", noreply=False)
    backend.clear()
    assert backend.get("mine") is None
    assert raw.get("someone-else") is None
    assert "whole memcached server" in (MemcachedBackend.clear.__doc__ or "")


def test_clear_removes_what_another_connection_just_wrote(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address]
) -> None:
    # flush_all alone lets about one item in sixty written over another connection at the
    # same moment survive; clear() must not.
    writer, clearer = make(memcached_servers), make(memcached_servers)
    for i in range(300):
        writer.set("k", i)
        clearer.clear()
        assert writer.get("k") is None, f"an item outlived clear() on round {i}"


@pytest.mark.parametrize("pooled", [False, True], ids=["client", "pooled"])
def test_the_listing_holds_every_key_of_a_long_reply(
    memcached_servers: list[Address], pooled: bool
) -> None:
    # 3,000 keys make a reply of about 180 kB, many socket reads long.
    client = (PooledClient if pooled else Client)(memcached_servers[0], timeout=5)
    try:
        mine = {f"listed-{pooled}-{i}".encode() for i in range(3000)}
        assert not client.set_many(dict.fromkeys(mine, b"x"), noreply=False)
        assert mine <= set(listed_keys(client))
    finally:
        client.delete_many(list(mine), noreply=False)
        client.close()


def test_the_listing_holds_a_key_written_just_before(raw: Client) -> None:
    # The server moves a new item between its LRU queues in the background; the listing
    # walks the hash table, so a key is listed whichever queue it is in at that moment.
    for i in range(200):
        key = f"just-written-{i}".encode()
        assert raw.set(key, b"x", noreply=False)
        assert key in listed_keys(raw), f"round {i}"
    raw.delete_many([f"just-written-{i}" for i in range(200)], noreply=False)


def test_the_listing_waits_for_a_busy_crawler_and_then_raises(
    fresh_memcached_server: MemcachedServer,
) -> None:
    client = Client(fresh_memcached_server.address, timeout=5)
    try:
        assert not client.set_many({f"k{i}": b"x" for i in range(3000)}, noreply=False)
        # The crawler pauses 1 s after each 1,000 items, so this crawl lasts 2 s or more.
        assert client.raw_command(b"lru_crawler sleep 1000000") == b"OK"
        assert client.raw_command(b"lru_crawler crawl all") == b"OK"
        with pytest.raises(MemcacheServerError, match="stayed busy"):
            listed_keys(client, patience=0.2)
        assert client.raw_command(b"lru_crawler sleep 0") == b"OK"
        assert len(listed_keys(client, patience=10)) == 3000
    finally:
        client.close()


def test_passed_in_client_is_not_closed(memcached_servers: list[Address]) -> None:
    client = Client(memcached_servers[0], connect_timeout=5, timeout=5)
    try:
        backend = MemcachedBackend(client=client, prefix="p:")
        assert backend.servers == [memcached_servers[0]]
        backend.set("k", "v")
        sock = client.sock
        assert sock is not None
        backend.close()
        assert client.sock is sock
        assert sock.fileno() != -1
        assert backend.get("k") == "v"
    finally:
        client.close()


def test_owned_client_is_closed_and_reconnects(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address]
) -> None:
    backend = make(memcached_servers)
    assert isinstance(backend.client, PooledClient)
    backend.set("k", "v")
    assert backend.client.client_pool.free
    backend.close()
    assert not backend.client.client_pool.free
    assert backend.get("k") == "v"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_builds_its_own_pool(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address]
) -> None:
    backend = make(memcached_servers)
    backend.set("parent", "p")
    inherited = backend.client
    parent_socks = [conn.sock for conn in inherited.client_pool.free]
    assert parent_socks
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that runs threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            rebuilt = backend.client is not inherited
            read = backend.get("parent") == "p"
            backend.set("child", "c")
            code = 0 if rebuilt and read else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.client is inherited
    assert backend.get("child") == "c"
    # The parent still talks over its own connection, which the child left open.
    assert [conn.sock for conn in inherited.client_pool.free] == parent_socks
    assert all(sock.fileno() != -1 for sock in parent_socks)


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cache:11311", [("cache", 11311)]),
        ("cache", [("cache", 11211)]),
        (("cache", 1), [("cache", 1)]),
        ("a:1,b:2", [("a", 1), ("b", 2)]),
        (" a:1 ; b:2 ;", [("a", 1), ("b", 2)]),
        (["a:1", ("b", 2), "a:1"], [("a", 1), ("b", 2)]),
        ("[::1]:11212", [("::1", 11212)]),
        ("unix:/run/memcached.sock", ["/run/memcached.sock"]),
    ],
    ids=["host-port", "default-port", "tuple", "comma", "semicolon", "list", "ipv6", "unix"],
)
def test_server_specs(
    make: t.Callable[..., MemcachedBackend], spec: t.Any, expected: list[t.Any]
) -> None:
    backend = make(spec)
    assert backend.servers == expected
    expected_type = PooledClient if len(expected) == 1 else HashClient
    assert isinstance(backend.client, expected_type)


@pytest.mark.parametrize(
    "options",
    [
        {"servers": ""},
        {"servers": []},
        {"servers": "host:port"},
        {"servers": ("host", None)},
        {"servers": 11211},
        {"servers": None},
        {"servers": "h:1", "prefix": b"p"},
        {"servers": "h:1", "timeout": 0},
        {"servers": "h:1", "connect_timeout": -1},
        {"servers": "h:1", "max_pool_size": 0},
        {"servers": "h:1", "max_value_size": 10},
    ],
)
def test_bad_options_are_refused(options: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        MemcachedBackend(**options)


def test_from_url(
    make: t.Callable[..., MemcachedBackend], memcached_servers: list[Address]
) -> None:
    host, port = memcached_servers[0]
    backend = MemcachedBackend.from_url(f"memcached://{host}:{port}?prefix=app:&timeout=1.5")
    try:
        assert backend.servers == [(host, port)]
        assert backend.prefix == "app:"
        assert backend.timeout == 1.5
        backend.set("k", "v")
        assert backend.get("k") == "v"
        assert backend.server_key("k") == "app:k"
    finally:
        backend.close()
    several = MemcachedBackend.from_url("memcached://a:1,b:2", prefix="x:")
    try:
        assert several.servers == [("a", 1), ("b", 2)]
        assert several.prefix == "x:"
    finally:
        several.close()
    for bad in ("redis://a:1", "memcached://", "memcached://a:1?bogus=1", "memcached://u@a:1"):
        with pytest.raises(ConfigurationError):
            MemcachedBackend.from_url(bad)


def test_repr_and_stats(make: t.Callable[..., MemcachedBackend]) -> None:
    backend = make("a:1,b:2", prefix="app:")
    assert repr(backend) == "<MemcachedBackend servers=['a:1', 'b:2'] prefix='app:'>"
    figures = backend.stats()
    assert figures["backend"] == "memcached"
    assert figures["servers"] == ["a:1", "b:2"]
    assert figures["prefix"] == "app:"


@pytest.mark.parametrize(
    ("driver_error", "expected"),
    [
        (socket.timeout("timed out"), BackendTimeoutError),
        (ConnectionRefusedError("refused"), BackendUnavailableError),
        (MemcacheUnexpectedCloseError(), BackendUnavailableError),
        (MemcacheUnknownError("Received unexpected response"), BackendUnavailableError),
        (MemcacheServerError("out of memory storing object"), BackendResponseError),
        (MemcacheClientError("bad data chunk"), BackendResponseError),
        (MemcacheUnknownCommandError("ERROR"), BackendResponseError),
        (MemcacheIllegalInputError("Key contains whitespace"), BackendResponseError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_driver_errors_are_translated(driver_error: BaseException, expected: type) -> None:
    backend = MemcachedBackend("127.0.0.1:1")
    error = backend._translate(driver_error)
    assert type(error) is expected
    assert is_availability_failure(error) == issubclass(expected, BackendUnavailableError)


def test_paused_and_killed_servers_are_availability_failures(
    fresh_memcached_server: MemcachedServer,
) -> None:
    address = fresh_memcached_server.address
    backend = MemcachedBackend([address], timeout=0.2, connect_timeout=0.2)
    try:
        backend.set("k", "v")
        fresh_memcached_server.pause()  # returns once the process is stopped
        try:
            with pytest.raises(BackendTimeoutError):
                backend.get("k")
        finally:
            fresh_memcached_server.resume()
    finally:
        backend.close()
    fresh_memcached_server.kill()
    with pytest.raises(BackendUnavailableError) as info:
        backend.get("k")
    assert is_availability_failure(info.value)
