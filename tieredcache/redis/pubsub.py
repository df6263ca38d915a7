"""Long-lived pub/sub subscriptions: private connections and the subscriber loop.

Every long-lived subscriber of the library (the backplane's, and the tracking subscribers
of :mod:`tieredcache.cluster_tracking`) runs :func:`run_subscription` on a thread of its own
and reads on a connection of its own, built by :class:`PrivateConnectionPool`, so that a
broken connection is reported to the loop (which tells its owner, who resets L1, and
reconnects with backoff) instead of being silently re-established by the driver.
"""

from __future__ import annotations

import collections
import logging
import random
import socket
import threading
import time
import typing as t

import redis
import redis.backoff
import redis.client
import redis.cluster
import redis.exceptions
import redis.retry

from tieredcache.errors import ConfigurationError
from tieredcache.redis.frames import FrameReader

if t.TYPE_CHECKING:
    from tieredcache.tracking import ServerTracking

__all__ = [
    "REDIS_MAJOR",
    "DriverSource",
    "PrivateConnectionPool",
    "SocketSource",
    "backoff_delay",
    "check_backoff",
    "dispose",
    "positive",
    "private_pubsub",
    "run_subscription",
]

logger = logging.getLogger("tieredcache.backplane")

REDIS_MAJOR = int(redis.__version__.split(".")[0])
"""The major version of redis-py (``protocol=`` exists from redis-py 5)."""


class PrivateConnectionPool:
    """What a ``PubSub`` sees as its pool: private connections, with no driver retries.

    Each connection is built with the settings of ``pool`` (a client's or a cluster node's
    connection pool) but outside its accounting, and without retries, so that a broken
    connection is reported to the subscriber loop instead of being silently re-established
    by the driver after a backoff that closing the subscriber would have to wait out.

    With ``tracking``, each connection speaks RESP2 and runs :meth:`ServerTracking.enable
    <tieredcache.tracking.ServerTracking.enable>` on every (re)connection, before the
    pub/sub object renews its subscriptions.

    :param pool: the connection pool whose settings the connections copy.
    :param tracking: the server-assisted invalidation to enable, or ``None``.
    """

    def __init__(self, pool: t.Any, tracking: ServerTracking | None = None) -> None:
        self._pool = pool
        self._tracking = tracking

    def get_connection(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """A new connected connection (``args`` are ignored, as by redis-py's own pools)."""
        options = dict(self._pool.connection_kwargs)
        options["retry"] = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
        if self._tracking is not None and REDIS_MAJOR >= 5:
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
        """Close ``connection``: it is never reused."""
        connection.disconnect()

    def get_encoder(self) -> t.Any:
        """The pool's encoder."""
        return self._pool.get_encoder()

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._pool, name)


def private_pubsub(client: t.Any, tracking: ServerTracking | None = None) -> t.Any:
    """A pub/sub object of ``client`` on a :class:`PrivateConnectionPool`; ``None`` when the
    client has no pool to copy (a ``RedisCluster``, or a client without a connection pool),
    which then subscribes with its own ``client.pubsub()``."""
    pool = getattr(client, "connection_pool", None)
    if (
        isinstance(client, redis.cluster.RedisCluster)
        or pool is None
        or not hasattr(pool, "connection_class")
        or not hasattr(pool, "connection_kwargs")
    ):
        return None
    return redis.client.PubSub(PrivateConnectionPool(pool, tracking))


def run_subscription(
    stop: threading.Event,
    *,
    new_pubsub: t.Callable[[], t.Any],
    channels: t.Sequence[str],
    on_active: t.Callable[[], None],
    on_message: t.Callable[[dict[str, t.Any]], None],
    on_lost: t.Callable[[Exception], None],
    on_ended: t.Callable[[], None],
    poll_interval: float,
    health_interval: float | None,
    confirm_timeout: float,
    backoff: tuple[float, float],
    connection: str = "subscriber",
) -> None:
    """Subscribe, listen, and on failure report and reconnect, until ``stop`` is set.

    Each round opens a pub/sub object with ``new_pubsub()``, subscribes to ``channels`` and
    waits (at most ``confirm_timeout`` seconds) for every confirmation, calls ``on_active()``,
    then hands every message read to ``on_message`` (an ``"unsubscribe"`` from the server
    breaks the subscription). After ``health_interval`` idle seconds it sends a ``PING``, and
    treats the connection as lost when no reply comes within as many seconds again.

    A failure (unless ``stop`` is set meanwhile) goes to ``on_lost(exc)``; ``on_ended()``
    follows every round, and the next round waits :func:`backoff_delay` seconds after a
    failure. Each read waits at most ``poll_interval`` seconds, the bound on how long
    setting ``stop`` takes to be noticed.

    :param connection: what the connection is, for the error messages.
    """
    failures = 0
    while not stop.is_set():
        pubsub = None
        try:
            pubsub = new_pubsub()
            pubsub.subscribe(*channels)
            source = SocketSource.of(pubsub, poll_interval) or DriverSource(pubsub, poll_interval)
            if not _confirm(source, stop, channels, confirm_timeout):
                break
            failures = 0
            on_active()
            _listen(source, pubsub, stop, on_message, health_interval, connection)
        except Exception as exc:
            if stop.is_set():
                break  # closed while connecting or reading: not a failure
            failures += 1
            on_lost(exc)
        finally:
            on_ended()
            if pubsub is not None:
                dispose(pubsub)
        if failures:
            stop.wait(backoff_delay(backoff, failures))


class DriverSource:
    """The messages of a subscribed ``PubSub``, read through the driver."""

    def __init__(self, pubsub: t.Any, poll_interval: float) -> None:
        self._pubsub = pubsub
        self._poll = poll_interval

    def next(self) -> dict[str, t.Any] | None:
        """The next message, or ``None`` after ``poll_interval`` seconds without one."""
        message: dict[str, t.Any] | None = self._pubsub.get_message(timeout=self._poll)
        return message


class SocketSource:
    """The messages of a subscribed ``PubSub``, read straight from its socket with a
    :class:`~tieredcache.redis.frames.FrameReader`: one ``recv`` takes every message that
    has arrived, where the driver makes several calls per message. Only for a connection
    that the driver has not read from since ``SUBSCRIBE`` was sent (RESP2 or RESP3)."""

    def __init__(self, sock: t.Any, poll_interval: float) -> None:
        self._sock = sock
        self._reader = FrameReader()
        self._ready: collections.deque[t.Any] = collections.deque()
        sock.settimeout(poll_interval)

    @classmethod
    def of(cls, pubsub: t.Any, poll_interval: float) -> SocketSource | None:
        """A source on ``pubsub``'s connection, or ``None`` when it cannot have one."""
        connection = getattr(pubsub, "connection", None)
        sock = getattr(connection, "_sock", None)
        if sock is None or str(getattr(connection, "protocol", 2) or 2) not in ("2", "3"):
            return None
        return cls(sock, poll_interval)

    def next(self) -> dict[str, t.Any] | None:
        """The next message, or ``None`` after ``poll_interval`` seconds without one.

        :raises redis.exceptions.ConnectionError: the connection closed or failed.
        """
        if not self._ready:
            try:
                data = self._sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                return None
            except OSError as exc:
                raise redis.exceptions.ConnectionError(f"reading the subscription: {exc}") from exc
            if not data:
                raise redis.exceptions.ConnectionError("the server closed the connection")
            self._reader.feed(data)
            self._ready.extend(self._reader.frames())
            if not self._ready:
                return None
        frame = self._ready.popleft()
        if isinstance(frame, Exception):
            raise frame
        if frame in (b"PONG", "PONG"):  # RESP3 answers a PING with a plain reply
            return {"type": "pong", "pattern": None, "channel": None, "data": b""}
        if not isinstance(frame, list) or not frame or not isinstance(frame[0], bytes):
            raise redis.exceptions.ConnectionError(f"unexpected frame {frame!r:.80}")
        kind = frame[0].decode("ascii", "replace").lower()
        channel = frame[1] if len(frame) > 1 else None
        data = frame[-1] if len(frame) > 2 else None
        return {"type": kind, "pattern": None, "channel": channel, "data": data}


Source = t.Union[DriverSource, SocketSource]


def _confirm(
    source: Source, stop: threading.Event, channels: t.Sequence[str], timeout: float
) -> bool:
    """Wait for the server's confirmations of SUBSCRIBE; False if stopped meanwhile."""
    confirmed = 0
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        message = source.next()
        if message is not None and message.get("type") == "subscribe":
            confirmed += 1
            if confirmed == len(channels):
                return True
        if time.monotonic() > deadline:
            raise redis.exceptions.TimeoutError("no confirmation of SUBSCRIBE in time")
    return False


def _listen(
    source: Source,
    pubsub: t.Any,
    stop: threading.Event,
    on_message: t.Callable[[dict[str, t.Any]], None],
    interval: float | None,
    connection: str,
) -> None:
    last_traffic = time.monotonic()
    ping_sent_at: float | None = None
    while not stop.is_set():
        message = source.next()
        now = time.monotonic()
        if message is None:
            if interval is None:
                continue
            if ping_sent_at is not None:
                if now - ping_sent_at > interval:
                    raise redis.exceptions.TimeoutError(
                        f"no PONG within {interval:g}s on the {connection} connection"
                    )
            elif now - last_traffic >= interval:
                pubsub.ping()
                ping_sent_at = now
            continue
        last_traffic = now
        ping_sent_at = None
        if message.get("type") == "unsubscribe":
            raise redis.exceptions.ConnectionError("unsubscribed by the server")
        on_message(message)


def backoff_delay(backoff: tuple[float, float], failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``first`` doubled per failure
    up to ``most``, with jitter (drawn between half and all of it)."""
    first, most = backoff
    delay = min(most, first * 2.0 ** min(failures - 1, 62))
    return random.uniform(delay / 2.0, delay)


def dispose(pubsub: t.Any) -> None:
    """Close a pub/sub object, ignoring the errors of a broken connection."""
    try:
        pubsub.close()
    except Exception:  # pragma: no cover - closing a broken connection
        logger.debug("backplane: closing a pub/sub connection failed", exc_info=True)


def positive(value: t.Any) -> bool:
    """Whether ``value`` is a positive int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_backoff(backoff: t.Any) -> tuple[float, float]:
    """``(first, most)`` of a reconnection backoff, as floats.

    :raises ConfigurationError: not a pair of positive numbers with ``first <= most``.
    """
    try:
        first, most = backoff
    except (TypeError, ValueError):
        raise ConfigurationError("reconnect_backoff must be a (first, most) pair") from None
    if not positive(first) or not positive(most) or first > most:
        raise ConfigurationError(
            f"reconnect_backoff must hold two positive numbers, first <= most, not {backoff!r}"
        )
    return float(first), float(most)
