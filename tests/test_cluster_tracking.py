"""Server-assisted invalidation on a real Redis Cluster: one tracking subscriber per primary.

Three masters on loopback (:mod:`tieredcache.testing.cluster`). A raw cluster client changes
a key on every primary and the composition's L1 loses it; a flush of one primary resets L1;
a primary that dies resets L1 and is tracked again once back; ``close()`` stops every thread;
a forked child subscribes on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import time
import typing as t
import uuid
import warnings

import pytest
import redis
import redis.cluster

from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.cluster_tracking import ClusterTracking
from tieredcache.redis.backplane import RedisBackplane
from tieredcache.testing.clock import wait_until
from tieredcache.testing.cluster import RedisCluster
from tieredcache.testing.servers import RedisServer
from tieredcache.testing.servers import ServerNotInstalledError
from tieredcache.testing.servers import free_port

pytestmark = pytest.mark.redis

PATIENCE = 15.0
#: The most a change on any primary may take to leave another process's L1 (loaded machine).
EVICTION_BOUND_S = 2.0
PREFIX = "ctrk:"


@pytest.fixture(scope="module")
def cluster() -> t.Iterator[RedisCluster]:
    started = RedisCluster(node_timeout_ms=2000)
    try:
        started.start()
    except ServerNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def healthy(cluster: RedisCluster) -> RedisCluster:
    for node in cluster.nodes:
        if not node.is_running():  # a failed test left a master down
            node.start()
    cluster.wait_ok(PATIENCE)
    for node in cluster.nodes:
        with node_client(node) as client:
            client.flushall()
    return cluster


def node_client(node: RedisServer) -> redis.Redis:
    return redis.Redis(node.host, node.port, socket_timeout=PATIENCE)


def cluster_client(cluster: RedisCluster) -> redis.cluster.RedisCluster:
    host, port = cluster.addresses[0]
    return redis.cluster.RedisCluster(host, port, socket_timeout=2.0, socket_connect_timeout=1.0)


def key_per_node(cluster: RedisCluster) -> dict[int, str]:
    """``{port: cache key}``: one key whose Redis name (with the prefix) lives on each master."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(cluster.nodes):
        key = f"k{i}"
        found.setdefault(cluster.node_for_key(PREFIX + key).port, key)
        i += 1
    return found


@pytest.fixture
def tracked(
    healthy: RedisCluster,
) -> t.Iterator[tuple[TieredCache, RedisBackplane, redis.cluster.RedisCluster]]:
    """A composition over the cluster with tracking, and a raw client of "another program"."""
    with contextlib.ExitStack() as stack:
        client = cluster_client(healthy)
        stack.callback(client.close)
        backplane = RedisBackplane(
            client,
            channel=f"test:{uuid.uuid4().hex}",
            tracking=True,
            reconnect_backoff=(0.02, 0.2),
            health_interval=1.0,
        )
        cache = TieredCache(
            MemoryBackend(), RedisBackend(client, prefix=PREFIX), backplane=backplane
        )
        stack.callback(cache.close)
        raw = cluster_client(healthy)
        stack.callback(raw.close)
        assert backplane.wait_connected(PATIENCE)
        yield cache, backplane, raw


def loaded(cache: TieredCache, backplane: RedisBackplane, key: str, value: t.Any) -> None:
    """Write ``key`` and make sure L1 holds it (after the write's own tracking echo)."""
    before = backplane.stats()["tracked"]
    cache.set(key, value, ttl=60)
    assert wait_until(lambda: backplane.stats()["tracked"] > before, PATIENCE)
    assert cache.get(key) == value and cache.l1.get(key) == value


def evicted(cache: TieredCache, key: str) -> t.Callable[[], bool]:
    return lambda: cache.l1.get(key) is None


def no_tracking_client(client: redis.Redis) -> t.Callable[[], bool]:
    return lambda: not any("t" in c["flags"] for c in client.client_list())


def tracking_threads() -> set[threading.Thread]:
    return {th for th in threading.enumerate() if th.name.startswith("tieredcache-tracking-")}


# == configuration ==============================================================================


def test_one_subscriber_per_primary(
    tracked: tuple[TieredCache, RedisBackplane, redis.cluster.RedisCluster],
    healthy: RedisCluster,
) -> None:
    _, backplane, _ = tracked
    nodes = backplane.stats()["tracking_nodes"]
    assert nodes == {f"{host}:{port}": True for host, port in sorted(healthy.addresses)}
    for node in healthy.nodes:
        with node_client(node) as client:
            tracking = [c for c in client.client_list() if "t" in c["flags"] and "B" in c["flags"]]
            assert len(tracking) == 1, client.client_list()  # broadcast tracking, one client
            assert tracking[0]["id"] == tracking[0]["redir"]  # redirected to itself


# == changes, flushes ===========================================================================


def test_a_change_on_every_primary_evicts_l1_within_the_bound(
    tracked: tuple[TieredCache, RedisBackplane, redis.cluster.RedisCluster],
    healthy: RedisCluster,
) -> None:
    cache, backplane, raw = tracked
    keys = key_per_node(healthy)
    for key in keys.values():
        loaded(cache, backplane, key, "old")
    took: dict[int, float] = {}
    for port, key in keys.items():
        started = time.monotonic()
        raw.set(f"{PREFIX}{key}".encode(), b"written by another program")
        assert wait_until(evicted(cache, key), PATIENCE)
        took[port] = time.monotonic() - started
        unchanged = [k for p, k in keys.items() if p not in took]
        assert all(cache.l1.get(k) == "old" for k in unchanged)  # only that key left L1
    print(
        "\ncluster tracking, change to L1 eviction per primary: "
        + ", ".join(f"{port}: {s * 1000:.2f} ms" for port, s in took.items())
    )
    assert max(took.values()) < EVICTION_BOUND_S
    for key in keys.values():  # never the old value again (the new bytes are not an entry)
        assert cache.get(key) != "old"


def test_a_flushall_on_one_primary_resets_l1(
    tracked: tuple[TieredCache, RedisBackplane, redis.cluster.RedisCluster],
    healthy: RedisCluster,
) -> None:
    cache, backplane, _ = tracked
    keys = key_per_node(healthy)
    for key in keys.values():
        loaded(cache, backplane, key, "v")
    before = backplane.stats()
    flushed = healthy.nodes[-1]
    with node_client(flushed) as client:
        client.flushall()
    assert wait_until(lambda: all(cache.l1.get(k) is None for k in keys.values()), PATIENCE)
    stats = backplane.stats()
    assert stats["tracked_flushes"] == before["tracked_flushes"] + 1
    assert stats["resets"] >= before["resets"] + 1
    # The flushed primary's key is gone from L2 too; the others are read back from L2.
    for port, key in keys.items():
        assert cache.get(key) == (None if port == flushed.port else "v")


# == failures and life cycle ====================================================================


def test_a_failed_primary_resets_l1_and_is_tracked_again_once_back(
    tracked: tuple[TieredCache, RedisBackplane, redis.cluster.RedisCluster],
    healthy: RedisCluster,
) -> None:
    cache, backplane, raw = tracked
    keys = key_per_node(healthy)
    victim = healthy.nodes[1]
    survivor_key = next(k for p, k in keys.items() if p != victim.port)
    loaded(cache, backplane, survivor_key, "v")
    before = backplane.stats()
    victim.kill()
    # The lost subscription resets L1 at once, and the backplane reports the gap.
    assert wait_until(lambda: cache.l1.get(survivor_key) is None, PATIENCE)
    # (The cluster's own pub/sub connection may notice first: wait for the node's flag.)
    node = f"{victim.host}:{victim.port}"
    assert wait_until(lambda: backplane.stats()["tracking_nodes"].get(node) is False, PATIENCE)
    assert not backplane.connected
    assert backplane.stats()["resets"] > before["resets"]
    victim.start()
    healthy.wait_ok(PATIENCE)
    assert backplane.wait_connected(PATIENCE)
    stats = backplane.stats()
    assert stats["reconnects"] >= before["reconnects"] + 1
    assert stats["connection_errors"] > before["connection_errors"]
    # Tracking is on again on the restarted primary (enabled on the new connection).
    key = keys[victim.port]
    loaded(cache, backplane, key, "again")
    raw.delete(f"{PREFIX}{key}".encode())
    assert wait_until(lambda: cache.l1.get(key) is None, PATIENCE)


def test_close_stops_every_subscriber_thread(healthy: RedisCluster) -> None:
    client = cluster_client(healthy)
    try:
        already = tracking_threads()
        backplane = RedisBackplane(client, tracking=True, tracking_prefixes=[PREFIX])
        backplane.subscribe(lambda kind, keys: None, lambda: None)
        assert backplane.wait_connected(PATIENCE)
        mine = tracking_threads() - already
        # One per primary and the topology supervisor; the pub/sub thread besides.
        assert len(mine) == len(healthy.nodes) + 1
        started = time.monotonic()
        backplane.close()
        assert time.monotonic() - started < 2.0
        assert not any(th.is_alive() for th in mine)
        assert backplane._thread is not None and not backplane._thread.is_alive()
        assert not backplane.connected
        for node in healthy.nodes:  # every tracking connection is closed on the servers
            with node_client(node) as raw:
                assert wait_until(no_tracking_client(raw), PATIENCE)
    finally:
        client.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_its_own_subscribers(
    tracked: tuple[TieredCache, RedisBackplane, redis.cluster.RedisCluster],
    healthy: RedisCluster,
) -> None:
    cache, backplane, _ = tracked
    parent_threads = tracking_threads()
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            connected = backplane.wait_connected(PATIENCE)
            report = {
                "connected": connected,
                "threads": len(tracking_threads() - parent_threads),
                "nodes": backplane.stats()["tracking_nodes"],
            }
            os.write(write_end, json.dumps(report).encode())
            cache.close()
            report_closed = not tracking_threads()
            code = 0 if report_closed else 2
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 30.0)
        assert ready, "the forked child did not report"
        report = json.loads(os.read(read_end, 65536))
    finally:
        os.close(read_end)
    assert wait_until(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, PATIENCE)
    assert report["connected"] is True
    assert report["threads"] == len(healthy.nodes) + 1
    assert all(report["nodes"].values()) and len(report["nodes"]) == len(healthy.nodes)
    assert backplane.connected  # the parent's subscribers are untouched


def test_a_failover_moves_tracking_to_the_new_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    # A cluster of its own: a replica joins one master, then takes over (CLUSTER FAILOVER),
    # with no connection of the backplane broken and no command sent through its client.
    monkeypatch.setattr(ClusterTracking, "check_interval", 0.5)
    with contextlib.ExitStack() as stack:
        cl = stack.enter_context(RedisCluster(node_timeout_ms=2000))
        port = free_port()
        replica = RedisServer(
            port,
            extra_args=[
                *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
                *("--cluster-port", str(free_port()), "--cluster-node-timeout", "1000"),
            ],
        )
        replica.start()
        stack.callback(replica.stop)
        victim = cl.nodes[0]
        rc = stack.enter_context(node_client(replica))
        with node_client(victim) as vc:
            victim_id = vc.execute_command("CLUSTER", "MYID")
            nodes = vc.execute_command("CLUSTER", "NODES")
        text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
        myself = next(line for line in text.splitlines() if "myself" in line)
        bus_port = myself.split()[1].split("@")[1].split(",")[0]
        rc.execute_command("CLUSTER", "MEET", victim.host, victim.port, bus_port)
        assert wait_until(
            lambda: cl.cluster_info(replica).get("cluster_known_nodes") == "4", PATIENCE
        )
        assert wait_until(lambda: known(rc, victim_id), PATIENCE)
        rc.execute_command("CLUSTER", "REPLICATE", victim_id)
        assert wait_until(lambda: rc.info("replication")["master_link_status"] == "up", PATIENCE)

        client = redis.cluster.RedisCluster(cl.nodes[1].host, cl.nodes[1].port)
        stack.callback(client.close)
        backplane = RedisBackplane(client, tracking=True, reconnect_backoff=(0.02, 0.2))
        cache = TieredCache(
            MemoryBackend(), RedisBackend(client, prefix=PREFIX), backplane=backplane
        )
        stack.callback(cache.close)
        assert backplane.wait_connected(PATIENCE)
        old, new = f"{victim.host}:{victim.port}", f"{replica.host}:{replica.port}"
        assert set(backplane.stats()["tracking_nodes"]) == {f"{h}:{p}" for h, p in cl.addresses}
        key = next(f"f{i}" for i in range(10_000) if cl.node_for_key(f"{PREFIX}f{i}") is victim)
        loaded(cache, backplane, key, "old")

        rc.execute_command("CLUSTER", "FAILOVER")
        assert wait_until(lambda: new in backplane.stats()["tracking_nodes"], PATIENCE)
        assert wait_until(lambda: old not in backplane.stats()["tracking_nodes"], PATIENCE)
        assert backplane.wait_connected(PATIENCE)
        assert backplane.stats()["connection_errors"] == 0  # found by the topology check
        # The new primary's subscription began with a reset; load the key again and change
        # it through the new primary.
        loaded(cache, backplane, key, "old")
        raw = redis.cluster.RedisCluster(replica.host, replica.port)
        stack.callback(raw.close)
        raw.delete(f"{PREFIX}{key}".encode())
        assert wait_until(evicted(cache, key), PATIENCE)


def known(client: redis.Redis, node_id: bytes) -> bool:
    nodes = client.execute_command("CLUSTER", "NODES")
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    return node_id.decode() in text
