"""
Backplane
=========

A backplane keeps the in-process L1 of many processes coherent: after a process writes,
deletes, touches or clears keys, it publishes one small notification, and every *other*
process evicts those keys from its L1 (it re-reads them from the shared L2 on the next
access). A ``"set"`` written through a Redis L2 on the backplane's server is announced in
the write's own ``MULTI``/``EXEC`` and may carry the new entries (see
:meth:`RedisBackplane.announcement`): a process holding such a key replaces its copy in order
instead of evicting it (:mod:`tieredcache.tiered.coherence`). Every other message carries
keys only.

:class:`Backplane` is the protocol a composition talks to; :class:`RedisBackplane`
implements it with Redis pub/sub.

Messages
--------

One ``PUBLISH`` per operation on one channel (``"tieredcache:invalidate"`` by default), all
keys of a batch operation in one message. The payload is compact ASCII JSON::

    {"o":"5f0c9a1e6b2d4c73","k":"delete","v":1718000000000000000,"keys":["a","b"]}

``o`` is the publisher's origin id (random, per backplane instance, new after a fork), ``k``
the kind (``"set"``, ``"delete"``, ``"touch"`` or ``"clear"``; ``keys`` is empty for
``"clear"``), ``v`` the write version and ``keys`` the cache's own keys (before any backend
prefix). A ``"set"`` may add ``"e"``: ``{key: base64 of the encoded entry}`` (each at
most :data:`MAX_INLINE_ENTRY` bytes, signed like L2 payloads when the serializer signs);
receivers that do not know the field ignore it and evict. Unknown fields are ignored. A
well-formed message of an unknown kind is delivered conservatively: as
``"delete"`` of its keys, or as ``"clear"`` when it has none. A malformed message is
counted, logged and ignored.

Staleness bound
---------------

After a write in process A (L2 first, then the publish), process B's L1 stops serving the
old value as soon as B's subscriber thread has received the message and run the callback.
Measured on loopback (Redis 7.0, redis-py 8.1, CPython 3.11, 2 vCPUs) from the call to
``publish()`` to the return of ``on_invalidate`` in another process: **p50 ≈ 0.2 ms, p99 ≈
0.5 ms** (300 messages, two subscriber processes); between two backplanes of one process,
p50 ≈ 0.08 ms, p99 ≈ 0.3 ms (500 messages). From the start of a ``TieredCache.set`` (L2 write,
then publish) to the eviction in the other processes: under 3 ms. ``tests/test_backplane.py``
measures these figures on every run and prints them (``pytest -rP``).

The eviction must also stop refills already in flight: a read in B that fetched the old
value from L2 just before A's write would otherwise put it back into L1 after the eviction.
A composition therefore evicts through its per-key write ordering (an L1-only write of the
keys, and an L1 reset epoch for ``clear`` and ``on_reset``), so such refills are skipped.

When the subscription breaks (connection lost, server restarted, no ``PONG`` to a health
check within ``health_interval``), messages published meanwhile are lost, so the subscriber
calls ``on_reset()`` at once: the composition flushes its L1, and from then on serves only
values re-read from L2. It calls ``on_reset()`` again once it has resubscribed (the L1 may
have been refilled from L2 during the gap), and also after the very first subscription
(closing the window between creating the cache and the subscription taking effect). While
disconnected, L1 entries refilled during the gap are bounded only by the L1 TTL: a
composition may check :attr:`Backplane.connected` and skip refills meanwhile.

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
fork with the pub/sub one.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import random
import secrets
import threading
import time
import typing as t
import weakref

from tieredcache import lifecycle
from tieredcache.cluster_tracking import ClusterTracking
from tieredcache.errors import ConfigurationError
from tieredcache.ratelog import RateLimitedLog
from tieredcache.tracking import TRACKING_CHANNEL
from tieredcache.tracking import ServerTracking

try:
    import redis
    import redis.backoff
    import redis.client
    import redis.cluster
    import redis.exceptions
    import redis.retry
except ImportError as exc:  # pragma: no cover - redis is a declared dependency
    raise ConfigurationError(
        "RedisBackplane needs the 'redis' package; install it with `pip install redis`"
    ) from exc

from tieredcache.redis.connect import DRIVER_ERRORS as _DRIVER_ERRORS
from tieredcache.redis.connect import close_all as _close_all
from tieredcache.redis.connect import connect_url as _connect_url
from tieredcache.redis.connect import describe as _describe

__all__ = [
    "DEFAULT_CHANNEL",
    "KINDS",
    "MAX_INLINE_ENTRY",
    "Backplane",
    "InvalidateCallback",
    "Message",
    "MessageCallback",
    "RedisBackplane",
    "ResetCallback",
]

logger = logging.getLogger("tieredcache.backplane")

DEFAULT_CHANNEL = "tieredcache:invalidate"
"""The pub/sub channel used unless another is given."""

KINDS = ("set", "delete", "touch", "clear")
"""The kinds of operation a message announces."""

InvalidateCallback = t.Callable[[str, list[str]], None]
"""``on_invalidate(kind, keys)``: another process changed ``keys`` (all keys for ``clear``)."""

ResetCallback = t.Callable[[], None]
"""``on_reset()``: messages may have been missed; flush (or cap) the whole L1."""

MAX_INLINE_ENTRY = 1024
"""The largest encoded entry (bytes) a ``"set"`` message carries; larger ones are evicted."""


class Message(t.NamedTuple):
    """A decoded message, as an ``on_message`` callback receives it."""

    own: bool  # published by this backplane
    kind: str  # a kind of KINDS (an unknown one is already mapped to delete or clear)
    keys: list[str]
    version: int
    entries: dict[str, bytes]  # the encoded new entries a "set" carries (may be empty)


MessageCallback = t.Callable[[Message], None]
"""``on_message(message)``: every well-formed message, this process's own included."""

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


_B = t.TypeVar("_B", bound="Backplane")

_LOG_INTERVAL = 10.0  # seconds between two warnings of the same kind
_thread_ids = itertools.count(1)
_REDIS_MAJOR = int(redis.__version__.split(".")[0])  # protocol= exists from redis-py 5


class Backplane:
    """Cross-process L1 invalidation: the protocol a composition uses.

    A composition calls :meth:`publish` after each write that changes what other
    processes' L1 may hold, and :meth:`subscribe` once, with two callbacks:

    - ``on_invalidate(kind, keys)`` when *another* process (another origin) published:
      evict ``keys`` from L1, or all of L1 when ``kind == "clear"``;
    - ``on_reset()`` when messages may have been missed (the subscription was interrupted,
      or has just begun): flush (or cap) the whole L1.

    Callbacks run on the backplane's own thread: keep them short and never call
    :meth:`close` from one. An exception from ``on_invalidate`` is logged and counted, and
    ``on_reset()`` follows, so no stale entry survives a failing callback.

    :meth:`publish` never raises because of the transport: a failure is counted, logged
    (rate-limited) and reported by returning False, so that the caller (a composition's L2
    gate) can send the keys again later. Messages a backplane published itself are ignored
    by its subscriber.

    Implementations are thread-safe and usable as context managers (:meth:`close` on exit).
    """

    def publish(self, kind: str, keys: t.Sequence[str], version: int = 0) -> bool:
        """Announce that this process changed ``keys``; never raises on transport errors.

        :returns: True if the message was sent, False if it failed or was dropped.

        :param kind: ``"set"``, ``"delete"``, ``"touch"`` or ``"clear"``.
        :param keys: the cache's keys (ignored for ``"clear"``).
        :param version: the write version (:func:`~tieredcache.entry.next_version`).
        :raises ConfigurationError: ``kind`` is unknown or ``keys`` is a single str.
        """
        raise NotImplementedError

    def subscribe(
        self,
        on_invalidate: InvalidateCallback,
        on_reset: ResetCallback,
        *,
        on_message: MessageCallback | None = None,
    ) -> None:
        """Start delivering other processes' messages to ``on_invalidate``.

        With ``on_message``, every well-formed message (this backplane's own included, with
        ``own=True``) goes to it instead, as a :class:`Message` carrying the version and
        any entries a ``"set"`` carries.

        Returns at once; the subscription becomes active in the background (see
        :meth:`wait_connected`).

        :raises ConfigurationError: already subscribed, closed, or a callback is not callable.
        """
        raise NotImplementedError

    @property
    def origin(self) -> str:
        """The id this backplane's messages carry (random; new after a fork)."""
        raise NotImplementedError

    def bind(self, l2: t.Any) -> None:
        """Learn the L2 of the composition that subscribes (called before :meth:`subscribe`).

        A :class:`RedisBackplane` with ``tracking=True`` and no ``tracking_prefixes`` tracks
        the L2 backend's key prefix. The default does nothing.
        """

    @property
    def connected(self) -> bool:
        """True while the subscription is active."""
        return False

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the subscription is active; True if it is."""
        return self.connected

    def stats(self) -> dict[str, t.Any]:
        """Counters and state (see :meth:`RedisBackplane.stats`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the subscriber (joined, bounded) and release connections. Idempotent."""

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisBackplane(Backplane):
    """A :class:`Backplane` over Redis pub/sub.

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
    :raises ConfigurationError: a bad option, or ``tracking`` with a client that has no
        connection pool.
    """

    name = "redis"
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
    ) -> None:
        if not isinstance(tracking, bool):
            raise ConfigurationError(f"tracking must be True or False, not {tracking!r}")
        if tracking_prefixes is not None and not tracking:
            raise ConfigurationError("tracking_prefixes needs tracking=True")
        self._tracking = ServerTracking(tracking_prefixes) if tracking else None
        if not isinstance(channel, str) or not channel:
            raise ConfigurationError("channel must be a non-empty str")
        first, most = _check_backoff(reconnect_backoff)
        if health_interval is not None and not _positive(health_interval):
            raise ConfigurationError("health_interval must be a positive number or None")
        if not _positive(close_timeout):
            raise ConfigurationError("close_timeout must be a positive number")
        if origin is not None and (not isinstance(origin, str) or not origin):
            raise ConfigurationError("origin must be a non-empty str")
        self._closers: list[t.Callable[[], None]] = []
        if client is None:
            client, self._closers = _connect_url("redis://localhost:6379/0", {})
        if self._tracking is not None:
            _check_tracking_client(client, self._closers)
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
        self._backoff = (float(first), float(most))
        self._health_interval = None if health_interval is None else float(health_interval)
        self._close_timeout = float(close_timeout)
        self._target = _describe(client)
        self._origin = origin if origin is not None else _new_origin()
        self._on_invalidate: InvalidateCallback | None = None
        self._on_reset: ResetCallback | None = None
        self._on_message: MessageCallback | None = None
        self._closed = False
        self._init_process_state()
        _register(self)

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
        ``tracking_prefixes``).

        :raises ConfigurationError: an unsupported URL or a bad option.
        :raises BackendUnavailableError: a cluster could not be reached.
        """
        client, closers = _connect_url(
            url, {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        )
        try:
            backplane = cls(client, channel=channel, **options)
        except BaseException:
            _close_all(closers)
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

    def publish(self, kind: str, keys: t.Sequence[str], version: int = 0) -> bool:
        if kind not in KINDS:
            raise ConfigurationError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if isinstance(keys, (str, bytes)):
            raise ConfigurationError("keys must be a sequence of str, not a single str")
        if self._closed:
            self._count("dropped")
            return False
        count = 0
        try:
            batch = [] if kind == "clear" else list(keys)
            count = len(batch)
            self._client.publish(self._channel, _encode(self._origin, kind, version, batch))
        except Exception as exc:  # a publish must never fail the caller's write
            self._count("publish_errors")
            self._log.warning(
                "publish",
                "backplane: publishing a %s of %d key(s) to %s failed: %r",
                kind,
                count,
                self._target,
                exc,
            )
            return False
        self._count("published")
        return True

    def shares_server(self, client: t.Any) -> bool:
        """True if ``client`` (an L2's redis-py client) publishes where this backplane does,
        so that a write and its announcement can go in one pipeline on ``client``."""
        if self._closed or isinstance(self._client, redis.cluster.RedisCluster):
            return False
        if client is self._client:
            return True
        if isinstance(client, redis.cluster.RedisCluster):
            return False
        ours, theirs = _describe(self._client), _describe(client)
        # Pub/sub channels are server-wide: the database number does not matter.
        return ours.rpartition("/")[0] == theirs.rpartition("/")[0] and "://" in ours

    def announcement(
        self,
        kind: str,
        keys: t.Sequence[str],
        version: int,
        entries: t.Mapping[str, bytes] | None = None,
    ) -> tuple[bytes, bytes, bool]:
        """``(channel, message, carries_entries)``: the message :meth:`publish` would send,
        for a caller that sends it itself (:meth:`RedisBackend.set_entries_announcing
        <tieredcache.RedisBackend.set_entries_announcing>`), then reports it with
        :meth:`sent`. A ``"set"`` carries the keys' encoded entries when every one of them
        is at most :data:`MAX_INLINE_ENTRY` bytes; receivers update their L1 copies in
        place with them (older receivers ignore the field and evict)."""
        if kind not in KINDS:
            raise ConfigurationError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        carried = None
        if kind == "set" and entries and all(len(v) <= MAX_INLINE_ENTRY for v in entries.values()):
            carried = entries
        message = _encode(self._origin, kind, version, list(keys), carried)
        return self._channel.encode("utf-8"), message, carried is not None

    def sent(self, ok: bool) -> None:
        """Count an :meth:`announcement` the caller sent (``ok``) or failed to send."""
        self._count("published" if ok else "publish_errors")

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
        failures = 0
        while not stop.is_set():
            pubsub = None
            try:
                pubsub = self._new_pubsub()
                if not self._subscribe(pubsub, stop):
                    break
                failures = 0
                self._activated()
                self._listen(pubsub, stop)
            except Exception as exc:
                if stop.is_set():
                    break  # closed while connecting or reading: not a failure
                failures += 1
                self._lost(exc)
            finally:
                self._connected.clear()
                if pubsub is not None:
                    _dispose(pubsub)
            if failures:
                stop.wait(self._delay(failures))

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
            exc_info=not isinstance(exc, _DRIVER_ERRORS),
        )
        if was_connected:
            self._reset()  # messages are being missed from now on

    def _new_pubsub(self) -> t.Any:
        client = self._client
        pool = getattr(client, "connection_pool", None)
        if (
            isinstance(client, redis.cluster.RedisCluster)
            or pool is None
            or not hasattr(pool, "connection_class")
            or not hasattr(pool, "connection_kwargs")
        ):
            return client.pubsub()
        return redis.client.PubSub(_PrivateConnectionPool(pool, self._tracking))

    def _subscribe(self, pubsub: t.Any, stop: threading.Event) -> bool:
        """Subscribe and wait for the server's confirmation; False if stopped meanwhile."""
        channels = [self._channel]
        if self._tracking is not None and self._cluster_tracking is None:
            channels.append(TRACKING_CHANNEL)
        pubsub.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + self._confirm_timeout()
        while not stop.is_set():
            message = pubsub.get_message(timeout=self.poll_interval)
            if message is not None and message.get("type") == "subscribe":
                confirmed += 1
                if confirmed == len(channels):
                    return True
            if time.monotonic() > deadline:
                raise redis.exceptions.TimeoutError("no confirmation of SUBSCRIBE in time")
        return False

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

    def _listen(self, pubsub: t.Any, stop: threading.Event) -> None:
        interval = self._health_interval
        last_traffic = time.monotonic()
        ping_sent_at: float | None = None
        while not stop.is_set():
            message = pubsub.get_message(timeout=self.poll_interval)
            now = time.monotonic()
            if message is None:
                if interval is None:
                    continue
                if ping_sent_at is not None:
                    if now - ping_sent_at > interval:
                        raise redis.exceptions.TimeoutError(
                            f"no PONG within {interval:g}s on the subscriber connection"
                        )
                elif now - last_traffic >= interval:
                    pubsub.ping()
                    ping_sent_at = now
                continue
            last_traffic = now
            ping_sent_at = None
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
            elif kind == "unsubscribe":
                raise redis.exceptions.ConnectionError("unsubscribed by the server")

    def _deliver(self, data: t.Any) -> None:
        with self._lock:
            self._counts["received"] += 1
            self._last_message_at = time.time()
        try:
            origin, kind, keys, version, entries = _decode_message(data)
        except ValueError as exc:
            self._count("malformed")
            self._log.warning(
                "malformed", "backplane: ignoring a malformed message on %r: %s", self._channel, exc
            )
            return
        own = origin == self._origin
        self._count("ignored_own" if own else "delivered")
        on_message = self._on_message
        if own and on_message is None:
            return
        self._dispatch(
            kind, keys, None if on_message is None else Message(own, kind, keys, version, entries)
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

    def _delay(self, failures: int) -> float:
        first, most = self._backoff
        delay = min(most, first * 2.0 ** min(failures - 1, 62))
        return random.uniform(delay / 2.0, delay)

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop and join the subscriber (at most ``close_timeout`` s), close owned clients.

        Idempotent. Later :meth:`publish` calls are dropped (counted as ``dropped``).
        """
        with self._lock:
            first_close = not self._closed
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
        if first_close:
            _unregister(self)
        _close_all(closers)

    def _after_fork_in_child(self) -> None:
        # The parent's subscriber thread does not exist here; its connection object is
        # left alone (closing it could disturb the parent's socket) and a new one is made.
        self._init_process_state()
        self._origin = _new_origin()
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


# -- the subscriber's connection ------------------------------------------------------------


class _PrivateConnectionPool:
    """What a ``PubSub`` sees as its pool: private connections, with no driver retries.

    Each connection is built with the client pool's settings but outside its accounting,
    and without retries, so that a broken connection is reported to the subscriber loop
    (which resets L1) instead of being silently re-established by the driver after a
    backoff that :meth:`RedisBackplane.close` would have to wait out.
    """

    def __init__(self, pool: t.Any, tracking: ServerTracking | None = None) -> None:
        self._pool = pool
        self._tracking = tracking

    def get_connection(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        options = dict(self._pool.connection_kwargs)
        options["retry"] = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
        if self._tracking is not None and _REDIS_MAJOR >= 5:
            # Invalidations arrive as pub/sub messages only in RESP2 (RESP3 pushes them).
            options["protocol"] = 2
            # Maintenance notifications (redis-py 7+) need RESP3: not on this connection.
            for name in ("maint_notifications_config", "maint_notifications_pool_handler"):
                options.pop(name, None)
        connection = self._pool.connection_class(**options)
        if self._tracking is not None:
            # Registered first: on every (re)connection tracking is enabled before the
            # pub/sub object renews its subscriptions (RESP2 allows no CLIENT command after).
            connection.register_connect_callback(self._tracking.enable)
        try:
            connection.connect()
        except BaseException:
            connection.disconnect()
            raise
        return connection

    def release(self, connection: t.Any) -> None:
        connection.disconnect()

    def get_encoder(self) -> t.Any:
        return self._pool.get_encoder()

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._pool, name)


def _check_tracking_client(client: t.Any, closers: list[t.Callable[[], None]]) -> None:
    """Refuse ``tracking=True`` with a client whose subscriber cannot enable it."""
    reason = None
    pool: t.Any = getattr(client, "connection_pool", None)
    if isinstance(client, redis.cluster.RedisCluster):
        return  # one tracking subscriber per primary: ClusterTracking
    if not hasattr(pool, "connection_class") or not hasattr(pool, "connection_kwargs"):
        reason = "needs a redis.Redis client with a connection pool"
    if reason is not None:
        _close_all(closers)
        raise ConfigurationError(f"tracking=True {reason}")


def _dispose(pubsub: t.Any) -> None:
    try:
        pubsub.close()
    except Exception:  # pragma: no cover - closing a broken connection
        logger.debug("backplane: closing a pub/sub connection failed", exc_info=True)


# -- messages ---------------------------------------------------------------------------------


def _encode(
    origin: str,
    kind: str,
    version: int,
    keys: t.Iterable[str],
    entries: t.Mapping[str, bytes] | None = None,
) -> bytes:
    message: dict[str, t.Any] = {"o": origin, "k": kind, "v": int(version), "keys": list(keys)}
    if entries:
        message["e"] = {k: base64.b64encode(v).decode("ascii") for k, v in entries.items()}
    return json.dumps(message, separators=(",", ":")).encode("ascii")


def _decode(data: t.Any) -> tuple[str, str, list[str]]:
    """``(origin, kind, keys)`` of a message; an unknown kind becomes delete or clear.

    :raises ValueError: the message is malformed.
    """
    origin, kind, keys, _, _ = _decode_message(data)
    return origin, kind, keys


def _decode_message(data: t.Any) -> tuple[str, str, list[str], int, dict[str, bytes]]:
    """``(origin, kind, keys, version, entries)``; unknown fields are ignored, and entries
    that are not well-formed are dropped (their keys are then evicted, not updated).

    :raises ValueError: the message is malformed.
    """
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii")
    if not isinstance(data, str):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    origin, kind, keys = message.get("o"), message.get("k"), message.get("keys", [])
    if not isinstance(origin, str) or not isinstance(kind, str):
        raise ValueError("origin and kind must be strings")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys must be a list of strings")
    if kind not in KINDS:
        kind = "delete" if keys else "clear"
    if kind == "clear":
        keys = []
    version = message.get("v", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        version = 0
    entries: dict[str, bytes] = {}
    carried = message.get("e")
    if kind == "set" and isinstance(carried, dict):
        wanted = set(keys)
        for key, text in carried.items():
            if key in wanted and isinstance(text, str):
                try:
                    entries[key] = base64.b64decode(text, validate=True)
                except ValueError:
                    continue
    return origin, kind, keys, version, entries


def _new_origin() -> str:
    return secrets.token_hex(8)


# -- helpers ----------------------------------------------------------------------------------


def _positive(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _check_backoff(backoff: t.Any) -> tuple[float, float]:
    try:
        first, most = backoff
    except (TypeError, ValueError):
        raise ConfigurationError("reconnect_backoff must be a (first, most) pair") from None
    if not _positive(first) or not _positive(most) or first > most:
        raise ConfigurationError(
            f"reconnect_backoff must hold two positive numbers, first <= most, not {backoff!r}"
        )
    return float(first), float(most)


# -- process-wide registry: exit and fork -------------------------------------------------------

_live_lock = threading.Lock()
_live: weakref.WeakSet[RedisBackplane] = weakref.WeakSet()


def _register(backplane: RedisBackplane) -> None:
    with _live_lock:
        _live.add(backplane)


def _unregister(backplane: RedisBackplane) -> None:
    with _live_lock:
        _live.discard(backplane)


def _close_at_exit() -> None:
    with _live_lock:
        backplanes = list(_live)
    for backplane in backplanes:
        try:
            backplane.close()
        except Exception:  # pragma: no cover - best effort at exit
            logger.warning("could not close %r at exit", backplane, exc_info=True)


def _after_fork_in_child() -> None:
    global _live_lock
    _live_lock = threading.Lock()
    for backplane in list(_live):
        backplane._after_fork_in_child()


# Subscriber threads are non-daemon: they are closed by the lifecycle's exit hook, which runs
# before the interpreter joins them.
lifecycle.on_fork(_after_fork_in_child, lifecycle.Stage.SUBSCRIBERS)
lifecycle.on_exit(_close_at_exit, lifecycle.Stage.SUBSCRIBERS)
