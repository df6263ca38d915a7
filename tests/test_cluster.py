"""RedisBackend on a real Redis Cluster: three masters on loopback, started by this module.

The contract with keys spread over every master, ``clear()`` on every master, a composition
with a cluster L2, and a master that dies (no replicas) and comes back. The cluster harness
itself (:mod:`tieredcache.testing.cluster`) is checked first.
"""

from __future__ import annotations

import contextlib
import time
import typing as t

import pytest
import redis
import redis.cluster

from tieredcache import Backend
from tieredcache import BackendError
from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.testing.clock import wait_until
from tieredcache.testing.cluster import SLOTS
from tieredcache.testing.cluster import RedisCluster
from tieredcache.testing.cluster import key_slot
from tieredcache.testing.contract import BackendContract
from tieredcache.testing.servers import RedisServer
from tieredcache.testing.servers import ServerNotInstalledError

pytestmark = pytest.mark.redis

#: Seconds a wait for the cluster may take before the test fails instead of hanging.
PATIENCE = 15.0
#: socket_timeout and connect_timeout of the failure tests, and how long one call may take:
#: at most three timeouts (the call, a re-read of the slot map, one retry) and slack for a
#: loaded machine, well below redis-py's default of ten retries.
FAST = 0.5
BOUND = 6 * FAST

Factory = t.Callable[..., RedisBackend]


@pytest.fixture(scope="module")
def cluster() -> t.Iterator[RedisCluster]:
    """One 3-master cluster for the module, stopped by PID at the end."""
    started = RedisCluster()
    try:
        started.start()
    except ServerNotInstalledError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield started
    finally:
        started.stop()


def node_client(node: RedisServer) -> redis.Redis:
    """A plain client on one master, bypassing the cluster routing."""
    return redis.Redis(node.host, node.port, socket_timeout=PATIENCE)


def keys_of(node: RedisServer) -> set[bytes]:
    with node_client(node) as client:
        return set(client.keys())


@pytest.fixture
def healthy(cluster: RedisCluster) -> RedisCluster:
    """The module's cluster, every master running and empty."""
    for node in cluster.nodes:
        if not node.is_running():  # a failed test left a master down
            node.start()
    cluster.wait_ok(PATIENCE)
    for node in cluster.nodes:
        with node_client(node) as client:
            client.flushall()
    return cluster


@pytest.fixture
def make_redis(healthy: RedisCluster) -> t.Iterator[Factory]:
    """``make_redis(**options)``: backends on the (emptied) cluster, closed at teardown."""
    made: list[RedisBackend] = []

    def factory(**options: t.Any) -> RedisBackend:
        backend = RedisBackend.from_url(healthy.url, **options)
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def failed_slots(cluster: RedisCluster, node: RedisServer) -> int:
    """How many slots *node* sees served by a master it marked as failed."""
    return int(cluster.cluster_info(node)["cluster_slots_fail"])


def spread_keys(cluster: RedisCluster, prefix: str, per_node: int) -> dict[int, list[str]]:
    """``{node index: keys}``: ``per_node`` keys whose full key each master serves."""
    found: dict[int, list[str]] = {i: [] for i in range(len(cluster.nodes))}
    for n in range(10_000):
        key = f"key-{n}"
        index = cluster.nodes.index(cluster.node_for_key(prefix + key))
        if len(found[index]) < per_node:
            found[index].append(key)
        if all(len(keys) == per_node for keys in found.values()):
            return found
    raise AssertionError("could not find keys for every master")


# == the harness ===============================================================================


def test_cluster_harness(cluster: RedisCluster) -> None:
    hosts = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
    assert cluster.url == "redis+cluster://" + ",".join(hosts)
    assert len(cluster.nodes) == 3
    assert len({node.pid for node in cluster.nodes}) == 3
    assert cluster.is_ok()
    with redis.cluster.RedisCluster(*cluster.addresses[0]) as client:
        for key in ["", "a", "user:42", "{user}:1", "x{}y", "{}{a}", "\u2603" * 40]:
            assert key_slot(key) == client.keyslot(key)
            assert cluster.node_for_key(key).port == client.get_node_from_key(key).port
        owners = {cluster.node_for_slot(slot).port for slot in range(0, SLOTS, 97)}
        assert owners == {node.port for node in cluster.nodes}


def test_missing_binaries_name_the_package() -> None:
    with pytest.raises(ServerNotInstalledError, match="redis-server"):
        RedisCluster(binary="no-such-redis-server").start()
    with pytest.raises(ServerNotInstalledError, match="redis-tools") as info:
        RedisCluster(cli_binary="no-such-redis-cli").start()
    assert info.value.package == "redis-tools"
    unstarted = RedisCluster()
    assert unstarted.nodes == []
    with pytest.raises(RuntimeError, match="not started"):
        unstarted.url  # noqa: B018
    with pytest.raises(ValueError, match="at least 3"):
        RedisCluster(masters=2)


# == the contract ==============================================================================


class TestRedisClusterBackend(BackendContract):
    @pytest.fixture(params=["", "app:"], ids=["noprefix", "prefix"])
    def make_backend(self, request: pytest.FixtureRequest, make_redis: Factory) -> Factory:
        return lambda **options: make_redis(prefix=request.param, **options)

    def write_raw(self, backend: Backend, key: str, data: bytes) -> None:
        assert isinstance(backend, RedisBackend)
        backend.client.set((backend.prefix + key).encode(), data)  # routed to the key's master

    min_lifetime = 1.0  # Redis expires keys in real time, to the millisecond


# == keys over every master ====================================================================


def test_batches_span_every_master(healthy: RedisCluster, make_redis: Factory) -> None:
    backend = make_redis(prefix="p:")
    by_node = spread_keys(healthy, "p:", 5)
    keys = [key for group in by_node.values() for key in group]
    assert len({key_slot("p:" + key) for key in keys}) > 3  # many slots, not one per node

    backend.set_many({key: key.upper() for key in keys}, ttl=60)
    for index, node in enumerate(healthy.nodes):
        assert keys_of(node) == {f"p:{key}".encode() for key in by_node[index]}
    assert backend.get_many([*keys, "missing"]) == {key: key.upper() for key in keys}

    doomed = by_node[0][:2] + by_node[1][:2] + by_node[2][:2]
    assert backend.delete_many([*doomed, "missing"]) == len(doomed)
    assert backend.get_many(keys) == {key: key.upper() for key in keys if key not in doomed}
    assert all(keys_of(node) for node in healthy.nodes)


@pytest.mark.parametrize("prefix", ["app:", ""], ids=["prefix", "noprefix"])
def test_clear_covers_every_master_and_only_its_keys(
    healthy: RedisCluster, make_redis: Factory, prefix: str
) -> None:
    backend = make_redis(prefix=prefix)
    other = make_redis(prefix="other:")
    by_node = spread_keys(healthy, prefix, 20)
    keys = [key for group in by_node.values() for key in group]
    backend.set_many({key: key for key in keys})
    other.set_many({key: key for key in keys[:10]})
    # Data of someone else on every master, written to the master that serves its slot.
    foreign: dict[int, bytes] = {}
    for index, node in enumerate(healthy.nodes):
        name = next(
            f"plain-{n}" for n in range(10_000) if healthy.node_for_key(f"plain-{n}") is node
        )
        foreign[index] = name.encode()
        with node_client(node) as client:
            client.set(name, b"a plain string")
    before = {index: keys_of(node) for index, node in enumerate(healthy.nodes)}
    assert all(len(found) > 20 for found in before.values())

    backend.clear()

    assert backend.get_many(keys) == {}
    # Without a prefix every envelope is the backend's, "other:" ones included.
    assert other.get_many(keys[:10]) == ({key: key for key in keys[:10]} if prefix else {})
    for index, node in enumerate(healthy.nodes):
        left = keys_of(node)
        assert foreign[index] in left
        if prefix:
            assert not any(name.startswith(prefix.encode()) for name in left)
            # Another prefix's envelopes stay: clear() removes only its own prefix.
            assert left == {name for name in before[index] if name.startswith(b"other:")} | {
                foreign[index]
            }
        else:
            # No prefix: only envelopes go, and "other:" keys are envelopes too.
            assert left == {foreign[index]}


# == a composition with a cluster L2 ===========================================================


def test_tiered_round_trip_with_refill(healthy: RedisCluster) -> None:
    with contextlib.ExitStack() as stack:
        l2 = RedisBackend.from_url(healthy.url, prefix="t:")
        writer = stack.enter_context(TieredCache(MemoryBackend(), l2))
        by_node = spread_keys(healthy, "t:", 3)
        keys = [key for group in by_node.values() for key in group]
        writer.set_many({key: {"v": key} for key in keys}, ttl=60)
        assert all(keys_of(node) for node in healthy.nodes)

        # A second process: an empty L1 of its own over the same cluster.
        reader = stack.enter_context(
            TieredCache(MemoryBackend(), RedisBackend.from_url(healthy.url, prefix="t:"))
        )
        assert reader.get_many(keys) == {key: {"v": key} for key in keys}
        figures = reader.stats()
        assert (figures["l2_hits"], figures["l1_hits"], figures["refills"]) == (9, 0, 9)
        assert reader.l1.get_entry(keys[0]) == reader.l2.get_entry(keys[0])

        assert reader.get(keys[-1]) == {"v": keys[-1]}
        assert reader.stats()["l1_hits"] == 1  # refilled: L2 was not asked again

        reader.delete(keys[0])
        assert writer.l2.get(keys[0]) is None


# == a master dies =============================================================================


def test_killed_master_fails_its_keys_only_and_recovers(
    healthy: RedisCluster, make_redis: Factory
) -> None:
    backend = make_redis(prefix="k:", socket_timeout=FAST, connect_timeout=FAST)
    by_node = spread_keys(healthy, "k:", 4)
    everything = {key: key for group in by_node.values() for key in group}
    backend.set_many(everything)
    victim = healthy.nodes[1]
    lost, kept = by_node[1], by_node[0] + by_node[2]

    victim.kill()

    calls: list[t.Callable[[], object]] = [
        lambda: backend.get(lost[0]),
        lambda: backend.set(lost[1], "new"),
        lambda: backend.delete(lost[2]),
        lambda: backend.add(lost[3], "new"),
        lambda: backend.get_many(list(everything)),
    ]
    for call in calls * 2:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as info:
            call()
        assert time.monotonic() - started < BOUND
        assert info.value.backend == "redis"
    # The other masters serve on, also once they have marked the dead one as failed.
    survivors = [node for node in healthy.nodes if node is not victim]
    for noticed in (False, True):
        assert backend.get_many(kept) == {key: everything[key] for key in kept}
        backend.set(kept[0], f"still writable {noticed}")
        everything[kept[0]] = f"still writable {noticed}"
        assert backend.get(kept[0]) == everything[kept[0]]
        if not noticed:
            assert wait_until(lambda: all(failed_slots(healthy, n) for n in survivors), PATIENCE)

    victim.start()  # the same port, node ID and slots; the data died with the process

    def answers() -> bool:
        try:
            return backend.get(lost[0]) is None
        except BackendError:
            return False

    assert wait_until(answers, PATIENCE)
    backend.set(lost[1], "after restart")
    assert backend.get(lost[1]) == "after restart"
    assert keys_of(victim) == {b"k:" + lost[1].encode()}
    assert backend.get_many(list(everything)) == {
        **{key: everything[key] for key in kept},
        lost[1]: "after restart",
    }
    healthy.wait_ok(PATIENCE)


def test_paused_master_times_out_within_a_bound(healthy: RedisCluster, make_redis: Factory) -> None:
    backend = make_redis(prefix="z:", socket_timeout=FAST, connect_timeout=FAST)
    by_node = spread_keys(healthy, "z:", 1)
    stuck, fine = by_node[2][0], by_node[0][0]
    backend.set_many({stuck: 1, fine: 2})
    healthy.nodes[2].pause()
    try:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            backend.get(stuck)
        # One retry after the client re-reads the slot map, not redis-py's default of ten.
        assert time.monotonic() - started < BOUND
        assert backend.get(fine) == 2
    finally:
        healthy.nodes[2].resume()
    assert wait_until(lambda: _quietly(lambda: backend.get(stuck)) == 1, PATIENCE)


def _quietly(call: t.Callable[[], t.Any]) -> t.Any:
    try:
        return call()
    except BackendError as exc:
        return exc
