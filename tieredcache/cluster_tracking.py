"""
Server-assisted invalidation on Redis Cluster
=============================================

``CLIENT TRACKING`` is per server: a Redis Cluster primary reports only the keys it serves,
and only to a client connected to it. :class:`ClusterTracking` therefore runs one tracking
subscriber per primary, each on a private RESP2 connection of its own that enables
``CLIENT TRACKING ON REDIRECT <own id> BCAST PREFIX ...`` (see
:class:`~tieredcache.tracking.ServerTracking`) and subscribes to ``__redis__:invalidate``,
again after every reconnection.

Primaries are read from the cluster client's slot map (``RedisCluster.get_primaries()``).
A supervisor thread compares that map with the running subscribers every
:attr:`ClusterTracking.topology_interval` seconds (the client updates its map when a command
meets ``MOVED``). It has the client reload the topology from the cluster (at most once per
second) when a subscriber loses or cannot open its connection, and when the primaries that
``CLUSTER SLOTS`` names, asked every :attr:`ClusterTracking.check_interval` seconds, differ
from the map's: so a failover is followed even when the application sends no command and
no connection of this process broke. A subscriber whose node is no longer a primary is
stopped; a new primary gets one (whose first subscription resets L1).

Every subscription that begins (the first, a reconnection, a new primary's) and every
subscription that breaks (connection lost, no ``PONG`` to a health check) calls
``on_reset()``: invalidations may have been missed meanwhile. A flush of one primary
(``FLUSHALL``, ``FLUSHDB``) reaches its subscriber as a null message, handed to
``on_message`` like any other, and resets the whole L1 (the cache cannot tell which keys
that primary held).

Threads are non-daemon (``tieredcache-tracking-N`` per primary and
``tieredcache-tracking-topology-N``); :meth:`ClusterTracking.close` stops and joins them
within ``close_timeout`` in all, and is also called at interpreter exit. In a forked child
the parent's threads do not exist: :meth:`ClusterTracking.start` there starts new ones.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import typing as t

import redis.client

from tieredcache import lifecycle
from tieredcache.ratelog import RateLimitedLog
from tieredcache.redis.pubsub import PrivateConnectionPool
from tieredcache.redis.pubsub import run_subscription
from tieredcache.tracking import TRACKING_CHANNEL
from tieredcache.tracking import ServerTracking

__all__ = ["ClusterTracking", "TrackingConnectionPool"]

TrackingConnectionPool = PrivateConnectionPool
"""The private connections of the tracking subscribers (an alias of
:class:`~tieredcache.redis.pubsub.PrivateConnectionPool`, kept for compatibility)."""

logger = logging.getLogger("tieredcache.backplane")

_LOG_INTERVAL = 10.0  # seconds between two warnings of the same kind
_REFRESH_INTERVAL = 1.0  # the least seconds between two topology reloads from the cluster
_ids = itertools.count(1)

MessageCallback = t.Callable[[t.Any], None]
"""``on_message(data)``: the payload of a tracking invalidation (key names, or ``None``)."""


class ClusterTracking:
    """One tracking subscriber per primary of a Redis Cluster, kept in step with the topology.

    :param client: a ``redis.cluster.RedisCluster``; its slot map names the primaries and its
        node pools give the connection settings. The caller owns it.
    :param tracking: the prefixes to track (bound to the L2 prefix before :meth:`start`).
    :param on_message: called with the data of every invalidation (a list of key names, or
        ``None`` for a flush), from the subscriber threads.
    :param on_reset: called when invalidations may have been missed: a subscription began or
        broke.
    :param count: called with ``"connection_errors"`` or ``"reconnects"`` for the owner's
        counters.
    :param reconnect_backoff: ``(first, most)`` seconds between reconnections of a
        subscriber, doubling per failure, with jitter.
    :param health_interval: idle seconds before a ``PING``, and the wait for its ``PONG``;
        ``None`` disables the check.
    :param close_timeout: the most seconds :meth:`close` waits for all threads together.
    :param confirm_timeout: the most seconds to wait for the confirmation of ``SUBSCRIBE``.
    """

    #: Seconds one ``get_message`` waits: the bound on how long :meth:`close` waits for an
    #: idle subscriber to notice.
    poll_interval: t.ClassVar[float] = 0.05
    #: Seconds between two comparisons of the client's primaries with the subscribers.
    topology_interval: t.ClassVar[float] = 1.0
    #: Seconds between two checks of the client's map against the cluster's (``CLUSTER
    #: SLOTS`` on one node): a failover that broke no connection of this process (a manual
    #: one, say) is noticed within this time even if the client meets no ``MOVED``.
    check_interval: t.ClassVar[float] = 5.0

    def __init__(
        self,
        client: t.Any,
        tracking: ServerTracking,
        *,
        on_message: MessageCallback,
        on_reset: t.Callable[[], None],
        count: t.Callable[[str], None] | None = None,
        reconnect_backoff: tuple[float, float] = (0.05, 2.0),
        health_interval: float | None = 5.0,
        close_timeout: float = 5.0,
        confirm_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._tracking = tracking
        self._on_message = on_message
        self._on_reset = on_reset
        self._count = count if count is not None else _ignore
        self._backoff = (float(reconnect_backoff[0]), float(reconnect_backoff[1]))
        self._health_interval = health_interval
        self._close_timeout = float(close_timeout)
        self._confirm_timeout = float(confirm_timeout)
        self._closed = False
        self._init_process_state()
        lifecycle.track(
            self, lifecycle.Stage.SUBSCRIBERS, after_fork="_after_fork_in_child", at_exit="close"
        )

    def _init_process_state(self) -> None:
        """The state that belongs to one process (rebuilt in a forked child)."""
        self._pid = os.getpid()
        self._changed = threading.Condition(threading.Lock())
        self._log = RateLimitedLog(_LOG_INTERVAL, logger=logger)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._refresh_wanted = False
        self._last_refresh = float("-inf")
        self._last_check = time.monotonic()
        self._subscribers: dict[str, _NodeSubscriber] = {}
        self._retired: list[_NodeSubscriber] = []
        self._supervisor: threading.Thread | None = None

    # -- state ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while every known primary has an active tracking subscription."""
        with self._changed:
            return self._connected_locked()

    def _connected_locked(self) -> bool:
        subscribers = list(self._subscribers.values())
        return bool(subscribers) and all(s.connected.is_set() for s in subscribers)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until :attr:`connected`; True if it is."""
        with self._changed:
            return self._changed.wait_for(self._connected_locked, timeout)

    def nodes(self) -> dict[str, bool]:
        """``{"host:port": connected}`` for every primary with a subscriber."""
        with self._changed:
            return {name: s.connected.is_set() for name, s in sorted(self._subscribers.items())}

    def threads(self) -> list[threading.Thread]:
        """The threads started in this process and not yet joined (for tests and exit)."""
        with self._changed:
            found = [s.thread for s in (*self._subscribers.values(), *self._retired)]
            found.append(self._supervisor)
        return [thread for thread in found if thread is not None]

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe on every primary (in the background). No-op if running or closed."""
        if self._pid != os.getpid():
            self._init_process_state()
        with self._changed:
            if self._closed or self._supervisor is not None:
                return
            self._reconcile_locked(self._primaries())
            supervisor = threading.Thread(
                target=self._supervise,
                name=f"tieredcache-tracking-topology-{next(_ids)}",
                daemon=False,
            )
            self._supervisor = supervisor
        supervisor.start()

    def refresh(self) -> None:
        """Reload the topology from the cluster soon (a subscriber failed)."""
        with self._changed:
            self._refresh_wanted = True
        self._wake.set()

    def stop(self) -> None:
        """Tell every thread to stop, without waiting; :meth:`start` does nothing afterwards."""
        self._stop_all()

    def close(self, timeout: float | None = None) -> None:
        """Stop every thread and join them, within ``timeout`` (``close_timeout``) in all.

        Idempotent; :meth:`start` does nothing afterwards.
        """
        subscribers, supervisor = self._stop_all()
        if self._pid != os.getpid():
            return  # the parent's threads do not exist here
        deadline = time.monotonic() + (self._close_timeout if timeout is None else timeout)
        threads = [s.thread for s in subscribers]
        for thread in [supervisor, *threads]:
            if thread is None or thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("backplane: the thread %s did not stop in time", thread.name)

    def _stop_all(self) -> tuple[list[_NodeSubscriber], threading.Thread | None]:
        with self._changed:
            self._closed = True
            self._stop.set()
            subscribers = [*self._subscribers.values(), *self._retired]
            for subscriber in subscribers:
                subscriber.stop.set()
            supervisor = self._supervisor
            self._changed.notify_all()
        self._wake.set()
        return subscribers, supervisor

    def _after_fork_in_child(self) -> None:
        if self._pid != os.getpid():
            self._init_process_state()  # the owner starts it again if it was subscribed

    # -- topology ---------------------------------------------------------------------

    def _primaries(self) -> dict[str, t.Any]:
        """``{"host:port": node}`` of the client's primaries (empty if it cannot tell)."""
        try:
            nodes = self._client.get_primaries()
        except Exception as exc:
            self._log.warning("topology", "backplane: no primaries from the client: %r", exc)
            return {}
        return {f"{node.host}:{node.port}": node for node in nodes}

    def _map_is_stale(self) -> bool:
        """Whether the cluster names other primaries than the client's map does."""
        try:
            slots = self._client.cluster_slots()
            serving = {f"{s['primary'][0]}:{s['primary'][1]}" for s in slots.values()}
        except Exception as exc:
            self._log.warning("topology", "backplane: CLUSTER SLOTS failed: %r", exc)
            return False
        return serving != set(self._primaries())

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.topology_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._changed:
                reload = self._refresh_wanted
            if not reload and time.monotonic() - self._last_check >= self.check_interval:
                self._last_check = time.monotonic()
                reload = self._map_is_stale()
            if reload and time.monotonic() - self._last_refresh >= _REFRESH_INTERVAL:
                self._last_refresh = time.monotonic()
                with self._changed:
                    self._refresh_wanted = False
                try:
                    self._client.nodes_manager.initialize()
                except Exception as exc:
                    self._log.warning(
                        "topology", "backplane: reloading the cluster topology failed: %r", exc
                    )
            primaries = self._primaries()
            with self._changed:
                if not self._stop.is_set():
                    self._reconcile_locked(primaries)

    def _reconcile_locked(self, primaries: dict[str, t.Any]) -> None:
        """Start a subscriber for each new primary, stop those of nodes no longer primary."""
        if not primaries:
            return  # the map is being reloaded, or unreadable: keep what runs
        for name in list(self._subscribers):
            if name not in primaries:
                subscriber = self._subscribers.pop(name)
                subscriber.stop.set()
                self._retired.append(subscriber)
                logger.info("backplane: %s is no longer a primary; tracking stops there", name)
        self._retired = [s for s in self._retired if s.thread is not None and s.thread.is_alive()]
        for name, node in primaries.items():
            if name not in self._subscribers:
                try:
                    pool = self._client.get_redis_connection(node).connection_pool
                except Exception as exc:
                    self._log.warning("node", "backplane: no pool for %s: %r", name, exc)
                    continue
                subscriber = _NodeSubscriber(self, name, pool)
                self._subscribers[name] = subscriber
                subscriber.start()
        self._changed.notify_all()

    # -- called by the subscribers ----------------------------------------------------

    def _state_changed(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self.connected else "idle")
        return f"<ClusterTracking {len(self._subscribers)} primaries {state}>"


class _NodeSubscriber:
    """The tracking subscription on one primary, on a thread of its own."""

    def __init__(self, group: ClusterTracking, name: str, pool: t.Any) -> None:
        self.group = group
        self.name = name
        self.pool = pool
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.thread: threading.Thread | None = None
        self.ever_connected = False

    def start(self) -> None:
        self.thread = threading.Thread(
            target=self.run, name=f"tieredcache-tracking-{next(_ids)}-{self.name}", daemon=False
        )
        self.thread.start()

    def run(self) -> None:
        """Subscribe, listen, and on failure reset, ask for a topology reload and retry."""
        group = self.group
        run_subscription(
            self.stop,
            new_pubsub=self.new_pubsub,
            channels=[TRACKING_CHANNEL],
            on_active=self.activated,
            on_message=self.received,
            on_lost=self.lost,
            on_ended=self.ended,
            poll_interval=group.poll_interval,
            health_interval=group._health_interval,
            confirm_timeout=group._confirm_timeout,
            backoff=group._backoff,
            connection="tracking",
        )

    def new_pubsub(self) -> t.Any:
        return redis.client.PubSub(PrivateConnectionPool(self.pool, self.group._tracking))

    def activated(self) -> None:
        if self.ever_connected:
            self.group._count("reconnects")
        self.ever_connected = True
        self.reset()  # anything changed before the subscription took effect is missed
        self.connected.set()
        self.group._state_changed()

    def received(self, message: dict[str, t.Any]) -> None:
        kind = message.get("type")
        if kind == "message" and ServerTracking.is_invalidation(message.get("channel")):
            self.group._on_message(message.get("data"))
        elif kind == "subscribe":  # resubscribed by the driver: messages were missed
            self.group._count("reconnects")
            self.reset()

    def ended(self) -> None:
        self.connected.clear()
        self.group._state_changed()

    def lost(self, exc: Exception) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        group = self.group
        group._count("connection_errors")
        group._log.warning(
            f"lost:{self.name}",
            "backplane: tracking subscription on %s %s: %r; reconnecting",
            self.name,
            "lost" if was_connected else "failed",
            exc,
        )
        if was_connected:
            self.reset()  # invalidations are being missed from now on
        group.refresh()  # a failover may have moved this node's slots elsewhere

    def reset(self) -> None:
        try:
            self.group._on_reset()
        except Exception:
            logger.warning("backplane: on_reset() raised", exc_info=True)


def _ignore(name: str) -> None:
    """The default ``count``: no counters."""
