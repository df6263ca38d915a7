"""
Redis backplane
===============

:class:`RedisBackplane` implements the :class:`~tieredcache.backplane.Backplane` protocol
with Redis pub/sub: it publishes the messages of :mod:`tieredcache.backplane` with
``PUBLISH`` and runs one subscriber thread that delivers other processes' messages. With
``tracking=True`` it also enables Redis server-assisted invalidation
(:mod:`tieredcache.tracking`, :mod:`tieredcache.cluster_tracking`).

Threads, forks and exit
-----------------------

Each subscribed :class:`RedisBackplane` runs one non-daemon thread named
``tieredcache-backplane-N`` that polls its own pub/sub connection with a short timeout, so
:meth:`~RedisBackplane.close` stops it promptly, connected or not. Callbacks run on that
thread. After ``os.fork()`` the child gets a new origin id and, if the parent was
subscribed, starts a subscriber of its own (the parent's thread does not exist in the
child), which calls ``on_reset()`` once subscribed. Every live backplane is closed before
the interpreter joins non-daemon threads at exit, so exit never hangs on a subscriber. With
``tracking=True`` on a Redis Cluster, the tracking subscribers (one thread per primary and
a topology supervisor, :mod:`tieredcache.cluster_tracking`) start, stop and restart after a
fork with the pub/sub one."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import typing as t

from tieredcache import lifecycle
from tieredcache.backplane import DEFAULT_CHANNEL
from tieredcache.backplane import Backplane
from tieredcache.backplane import InvalidateCallback
from tieredcache.backplane import Message
from tieredcache.backplane import MessageCallback
from tieredcache.backplane import ResetCallback
from tieredcache.backplane import decode_message
from tieredcache.backplane import encode_message
from tieredcache.backplane import message_keys
from tieredcache.backplane import message_prefix
from tieredcache.backplane import new_origin
from tieredcache.cluster_tracking import ClusterTracking
from tieredcache.errors import ConfigurationError
from tieredcache.ratelog import RateLimitedLog
from tieredcache.tracking import TRACKING_CHANNEL
from tieredcache.tracking import ServerTracking

try:
    import redis
    import redis.client
    import redis.cluster
    import redis.exceptions
except ImportError as exc:  # pragma: no cover - redis is a declared dependency
    raise ConfigurationError(
        "RedisBackplane needs the 'redis' package; install it with `pip install redis`"
    ) from exc

from tieredcache.redis.connect import DRIVER_ERRORS
from tieredcache.redis.connect import close_all
from tieredcache.redis.connect import connect_url
from tieredcache.redis.connect import describe
from tieredcache.redis.publisher import Publisher
from tieredcache.redis.publisher import check_linger
from tieredcache.redis.pubsub import check_backoff
from tieredcache.redis.pubsub import positive
from tieredcache.redis.pubsub import private_pubsub
from tieredcache.redis.pubsub import run_subscription

__all__ = ["RedisBackplane"]

# The name the backplane has always logged under (logging configurations refer to it).
logger = logging.getLogger("tieredcache.backplane")

_COUNTERS = (
    "published",
    "publish_errors",
    "dropped",
    "received",
    "delivered",
    "ignored_own",
    "malformed",
    "callback_errors",
    "connection_errors",
    "resets",
    "reconnects",
    "tracked",
    "tracked_flushes",
)

_LOG_INTERVAL = 10.0  # seconds between two warnings of the same kind
_thread_ids = itertools.count(1)


class RedisBackplane(Backplane):
    """A :class:`~tieredcache.backplane.Backplane` over Redis pub/sub.

    Thread-safe: :meth:`publish` may be called from any thread (it uses the client's
    connection pool); the subscriber runs on one thread of its own, on a private
    connection that bypasses the client's retries, so that every interruption is seen and
    reported with ``on_reset()``. Works with standalone and Sentinel clients; with a
    ``RedisCluster`` client the cluster's own pub/sub object is used.

    :param client: a ``redis.Redis`` client; the caller owns it and :meth:`close` leaves it
        open (the subscriber's private connection is always closed). ``None`` connects to
        ``redis://localhost:6379/0`` with a client the backplane owns. Sharing the L2
        backend's client (``RedisBackend.client``) is fine.
    :param channel: the pub/sub channel; caches that share L1 coherence share a channel.
    :param reconnect_backoff: ``(first, most)`` seconds between reconnection attempts; the
        delay doubles per failure up to ``most``, with jitter (each delay is drawn between
        half and all of it).
    :param health_interval: after this many idle seconds the subscriber sends a ``PING``
        on its connection, and treats the connection as lost when no reply comes within as
        many seconds again (a silently dropped connection would otherwise lose messages
        unnoticed). ``None`` disables the check.
    :param origin: the origin id (for tests); random by default. A forked child always
        takes a new random one.
    :param close_timeout: the most seconds :meth:`close` waits for the subscriber thread.
    :param tracking: also enable Redis server-assisted invalidation (``CLIENT TRACKING`` in
        broadcast mode, see :mod:`tieredcache.tracking`) on the subscriber connection: keys
        changed by *any* client, expired or evicted on the server, and flushes, evict L1
        too. Needs Redis 6.0 or later (the subscriber connection always speaks RESP2). With a
        ``RedisCluster`` client, one tracking subscriber runs per primary (a connection and
        a thread each, found from the client's slot map and followed through failovers),
        besides the pub/sub subscriber; a flush of any primary resets L1, and a broken
        subscription on any primary calls ``on_reset()`` and makes :attr:`connected` false
        until it is back (see :mod:`tieredcache.cluster_tracking`).
    :param tracking_prefixes: the Redis key-name prefixes tracked and stripped to give the
        cache's keys; by default the L2 backend's ``prefix`` (see :meth:`bind`), or every
        key when the backplane is used without a composition.
    :param linger: the most seconds a composition holds the announcement of a write, so
        that the writes of that time go out in one ``PUBLISH`` (0: send each at once). It
        adds to the staleness bound of other processes (see :mod:`tieredcache.backplane`).
    :raises ConfigurationError: a bad option, or ``tracking`` with a client that has no
        connection pool.
    """

    name = "redis"
    carries_entries = True
    #: Seconds one ``get_message`` waits: the bound on how long :meth:`close` waits for
    #: an idle subscriber to notice.
    poll_interval: t.ClassVar[float] = 0.05

    def __init__(
        self,
        client: t.Any = None,
        *,
        channel: str = DEFAULT_CHANNEL,
        reconnect_backoff: tuple[float, float] = (0.05, 2.0),
        health_interval: float | None = 5.0,
        origin: str | None = None,
        close_timeout: float = 5.0,
        tracking: bool = False,
        tracking_prefixes: t.Sequence[str] | None = None,
        linger: float = 0.005,
    ) -> None:
        self.linger = check_linger(linger)
        if not isinstance(tracking, bool):
            raise ConfigurationError(f"tracking must be True or False, not {tracking!r}")
        if tracking_prefixes is not None and not tracking:
            raise ConfigurationError("tracking_prefixes needs tracking=True")
        self._tracking = ServerTracking(tracking_prefixes) if tracking else None
        if not isinstance(channel, str) or not channel:
            raise ConfigurationError("channel must be a non-empty str")
        first, most = check_backoff(reconnect_backoff)
        if health_interval is not None and not positive(health_interval):
            raise ConfigurationError("health_interval must be a positive number or None")
        if not positive(close_timeout):
            raise ConfigurationError("close_timeout must be a positive number")
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ConfigurationError("origin must be a non-empty str")
        self._closers: list[t.Callable[[], None]] = []
        if client is None:
            client, self._closers = connect_url("redis://localhost:6379/0", {})
        if (
            self._tracking is not None
            and not isinstance(client, redis.cluster.RedisCluster)  # ClusterTracking
            and private_pubsub(client) is None
        ):
            close_all(self._closers)
            raise ConfigurationError(
                "tracking=True needs a redis.Redis client with a connection pool"
            )
        self._client: t.Any = client
        self._cluster_tracking: ClusterTracking | None = None
        if self._tracking is not None and isinstance(client, redis.cluster.RedisCluster):
            self._cluster_tracking = ClusterTracking(
                client,
                self._tracking,
                on_message=self._tracked,
                on_reset=self._reset,
                count=self._count,
                reconnect_backoff=(float(first), float(most)),
                health_interval=health_interval,
                close_timeout=close_timeout,
            )
        self._channel = channel
        self._publisher = Publisher(client, channel)
        self._backoff = (float(first), float(most))
        self._health_interval = None if health_interval is None else float(health_interval)
        self._close_timeout = float(close_timeout)
        self._target = describe(client)
        self._origin = origin if origin is not None else new_origin()
        self._on_invalidate: InvalidateCallback | None = None
        self._on_reset: ResetCallback | None = None
        self._on_message: MessageCallback | None = None
        self._closed = False
        self._init_process_state()
        # Subscriber threads are non-daemon: every live backplane is closed by the
        # lifecycle's exit hook, which runs before the interpreter joins them.
        lifecycle.track(
            self, lifecycle.Stage.SUBSCRIBERS, after_fork="_after_fork_in_child", at_exit="close"
        )

    def _init_process_state(self) -> None:
        """The state that belongs to one process (rebuilt in a forked child)."""
        self._lock = threading.Lock()
        self._log = RateLimitedLog(_LOG_INTERVAL, logger=logger)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._last_message_at: float | None = None
        self._ever_connected = False
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        channel: str = DEFAULT_CHANNEL,
        socket_timeout: float | None = 5.0,
        connect_timeout: float | None = 2.0,
        **options: t.Any,
    ) -> RedisBackplane:
        """A backplane with a client of its own, closed by :meth:`close`.

        Takes the URLs :meth:`RedisBackend.from_url <tieredcache.RedisBackend.from_url>`
        takes. ``options`` are this class's keyword arguments (``reconnect_backoff``,
        ``health_interval``, ``origin``, ``close_timeout``, ``tracking``,
        ``tracking_prefixes``, ``linger``).

        :raises ConfigurationError: an unsupported URL or a bad option.
        :raises BackendUnavailableError: a cluster could not be reached.
        """
        client, closers = connect_url(
            url, {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        )
        try:
            backplane = cls(client, channel=channel, **options)
        except BaseException:
            close_all(closers)
            raise
        backplane._closers = closers
        return backplane

    # -- properties -------------------------------------------------------------------

    @property
    def client(self) -> t.Any:
        """The redis-py client used to publish."""
        return self._client

    @property
    def channel(self) -> str:
        """The pub/sub channel."""
        return self._channel

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def connected(self) -> bool:
        group = self._cluster_tracking
        return self._connected.is_set() and (group is None or group.connected)

    @property
    def tracking(self) -> ServerTracking | None:
        """The server-assisted invalidation settings, or ``None`` when it is off."""
        return self._tracking

    def bind(self, l2: t.Any) -> None:
        if self._tracking is None:
            return
        prefix = getattr(l2, "prefix", None)
        if isinstance(prefix, str):
            self._tracking.bind(prefix)
        elif self._tracking.prefixes is None:
            raise ConfigurationError(
                f"tracking=True cannot tell the key prefix of {l2!r}: pass tracking_prefixes="
            )

    def wait_connected(self, timeout: float | None = None) -> bool:
        started = time.monotonic()
        if not self._connected.wait(timeout):
            return False
        group = self._cluster_tracking
        if group is None:
            return True
        return group.wait_connected(
            None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        )

    # -- publishing -------------------------------------------------------------------

    def publish(
        self,
        kind: str,
        keys: t.Sequence[str],
        version: int = 0,
        *,
        entries: t.Mapping[str, bytes] | None = None,
        previous: t.Mapping[str, int | None] | None = None,
    ) -> bool:
        batch = message_keys(kind, keys)
        if self._closed:
            self._count("dropped")
            return False
        try:
            message = encode_message(self._origin, kind, version, batch, entries, previous)
            self._publisher.send(message)
        except Exception as exc:  # a publish must never fail the caller's write
            self._count("publish_errors")
            self._log.warning(
                "publish",
                "backplane: publishing a %s of %d key(s) to %s failed: %r",
                kind,
                len(batch),
                self._target,
                exc,
            )
            return False
        self._count("published")
        return True

    # -- subscribing ------------------------------------------------------------------

    def subscribe(
        self,
        on_invalidate: InvalidateCallback,
        on_reset: ResetCallback,
        *,
        on_message: MessageCallback | None = None,
    ) -> None:
        if not callable(on_invalidate) or not callable(on_reset):
            raise ConfigurationError("on_invalidate and on_reset must be callable")
        if on_message is not None and not callable(on_message):
            raise ConfigurationError("on_message must be callable")
        with self._lock:
            if self._closed:
                raise ConfigurationError("this backplane is closed")
            if self._on_invalidate is not None:
                raise ConfigurationError("this backplane already has a subscriber")
            self._on_invalidate = on_invalidate
            self._on_reset = on_reset
            self._on_message = on_message
            self._start_locked()

    def _start_locked(self) -> None:
        thread = threading.Thread(
            target=self._run,
            args=(self._stop,),
            name=f"tieredcache-backplane-{next(_thread_ids)}",
            daemon=False,
        )
        self._thread = thread
        thread.start()
        if self._cluster_tracking is not None:
            self._cluster_tracking.start()  # one tracking subscriber per primary

    def _run(self, stop: threading.Event) -> None:
        """The subscriber thread: subscribe, listen, and on failure reset and reconnect."""
        channels = [self._channel]
        if self._tracking is not None and self._cluster_tracking is None:
            channels.append(TRACKING_CHANNEL)
        run_subscription(
            stop,
            new_pubsub=self._new_pubsub,
            channels=channels,
            on_active=self._activated,
            on_message=self._received,
            on_lost=self._lost,
            on_ended=self._connected.clear,
            poll_interval=self.poll_interval,
            health_interval=self._health_interval,
            confirm_timeout=self._confirm_timeout(),
            backoff=self._backoff,
        )

    def _lost(self, exc: Exception) -> None:
        """The subscription failed or broke: count, log and, if it was active, reset."""
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._count("connection_errors")
        self._log.warning(
            "subscribe",
            "backplane: subscription to %r on %s %s: %r; reconnecting",
            self._channel,
            self._target,
            "lost" if was_connected else "failed",
            exc,
            exc_info=not isinstance(exc, DRIVER_ERRORS),
        )
        if was_connected:
            self._reset()  # messages are being missed from now on

    def _new_pubsub(self) -> t.Any:
        pubsub = private_pubsub(self._client, self._tracking)
        return self._client.pubsub() if pubsub is None else pubsub

    def _confirm_timeout(self) -> float:
        kwargs = getattr(getattr(self._client, "connection_pool", None), "connection_kwargs", {})
        timeout = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
        return float(timeout) if timeout else 5.0

    def _activated(self) -> None:
        with self._lock:
            if self._ever_connected:
                self._counts["reconnects"] += 1
            self._ever_connected = True
        self._reset()  # anything published before the subscription took effect is missed
        self._connected.set()

    def _received(self, message: dict[str, t.Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            if self._tracking is not None and self._tracking.is_invalidation(
                message.get("channel")
            ):
                self._tracked(message.get("data"))
            else:
                self._deliver(message.get("data"))
        elif kind == "subscribe":
            # The driver reconnected and resubscribed by itself: messages were missed.
            with self._lock:
                self._counts["reconnects"] += 1
            self._reset()

    def _deliver(self, data: t.Any) -> None:
        with self._lock:
            self._counts["received"] += 1
            self._last_message_at = time.time()
        if isinstance(data, bytes) and data.startswith(message_prefix(self._origin)):
            self._count("ignored_own")  # ours (encode_message writes the origin first)
            return
        try:
            origin, kind, keys, version, entries, previous = decode_message(data)
        except ValueError as exc:
            self._count("malformed")
            self._log.warning(
                "malformed", "backplane: ignoring a malformed message on %r: %s", self._channel, exc
            )
            return
        if origin == self._origin:
            self._count("ignored_own")
            return
        self._count("delivered")
        on_message = self._on_message
        self._dispatch(
            kind,
            keys,
            None if on_message is None else Message(False, kind, keys, version, entries, previous),
        )

    def _tracked(self, data: t.Any) -> None:
        """A tracking invalidation: keys changed on the server (by anyone), or a flush."""
        assert self._tracking is not None
        keys = self._tracking.keys(data)
        with self._lock:
            self._counts["tracked"] += 1
            self._last_message_at = time.time()
        if keys is None:
            self._count("tracked_flushes")
            self._reset()
        elif keys:
            self._dispatch("delete", keys)

    def _dispatch(self, kind: str, keys: list[str], message: Message | None = None) -> None:
        """Hand a message to the subscriber: the whole message to ``on_message`` when there
        is one (it may carry new entries), else ``on_invalidate(kind, keys)``."""
        callback = self._on_invalidate
        if callback is None:  # pragma: no cover - the thread starts after subscribe()
            return
        on_message = self._on_message
        try:
            if message is not None and on_message is not None:
                on_message(message)
            else:
                callback(kind, keys)
        except Exception:
            self._count("callback_errors")
            self._log.warning(
                "callback",
                "backplane: on_invalidate(%r, %d key(s)) raised; resetting L1 instead",
                kind,
                len(keys),
                exc_info=True,
            )
            self._reset()

    def _reset(self) -> None:
        self._count("resets")
        callback = self._on_reset
        if callback is None:  # pragma: no cover - the thread starts after subscribe()
            return
        try:
            callback()
        except Exception:
            self._count("callback_errors")
            self._log.warning("reset", "backplane: on_reset() raised", exc_info=True)

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop and join the subscriber (at most ``close_timeout`` s), close owned clients.

        Idempotent. Later :meth:`publish` calls are dropped (counted as ``dropped``).
        """
        with self._lock:
            self._closed = True
            self._stop.set()
            thread = self._thread
            closers, self._closers = self._closers, []
        started = time.monotonic()
        if self._cluster_tracking is not None:
            self._cluster_tracking.stop()  # joined below, after the subscriber thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._close_timeout)
            if thread.is_alive():
                logger.warning(
                    "backplane: the subscriber thread %s did not stop within %gs",
                    thread.name,
                    self._close_timeout,
                )
        if self._cluster_tracking is not None:
            spent = time.monotonic() - started
            self._cluster_tracking.close(max(0.0, self._close_timeout - spent))
        self._publisher.close()
        close_all(closers)

    def _after_fork_in_child(self) -> None:
        # The parent's subscriber thread does not exist here; its connection object is
        # left alone (closing it could disturb the parent's socket) and a new one is made.
        self._init_process_state()
        self._origin = new_origin()
        if not self._closed and self._on_invalidate is not None:
            self._start_locked()  # it calls on_reset() once subscribed: L1 is a copy

    # -- introspection ----------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def stats(self) -> dict[str, t.Any]:
        """Counters and state.

        - ``published``, ``publish_errors``, ``dropped`` (after :meth:`close`): publishes;
        - ``received`` = ``delivered + ignored_own + malformed``: messages read;
        - ``callback_errors``, ``connection_errors``; ``errors`` is their sum with
          ``publish_errors`` and ``malformed``;
        - ``resets`` (``on_reset()`` calls), ``reconnects`` (subscriptions after the first);
        - ``tracked`` (tracking invalidations read, with ``tracking=True``; own writes
          included), ``tracked_flushes`` (flushes among them);
        - ``tracking_nodes`` (Redis Cluster with ``tracking=True`` only):
          ``{"host:port": connected}`` per primary;
        - ``connected``, ``subscribed``, ``closed``, ``last_message_at`` (epoch seconds of
          the last message read, or ``None``), ``origin``, ``channel``.
        """
        with self._lock:
            figures: dict[str, t.Any] = dict(self._counts)
            figures["last_message_at"] = self._last_message_at
        figures["errors"] = (
            figures["publish_errors"]
            + figures["malformed"]
            + figures["callback_errors"]
            + figures["connection_errors"]
        )
        figures["connected"] = self.connected
        figures["subscribed"] = self._on_invalidate is not None
        figures["closed"] = self._closed
        figures["origin"] = self._origin
        figures["channel"] = self._channel
        figures["tracking"] = self._tracking is not None
        if self._cluster_tracking is not None:
            figures["tracking_nodes"] = self._cluster_tracking.nodes()
        return figures

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self.connected else "idle")
        return f"<RedisBackplane {self._target} channel={self._channel!r} {state}>"
