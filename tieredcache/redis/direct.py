"""The direct protocol path: simple commands written straight to redis-py's connection
layer (see :class:`DirectCommands`).

On a loopback server redis-py's own Python is about a third of a ``GET``; ``GET``, ``MGET``,
``SET`` and ``UNLINK`` of a plain client skip its command dispatch and go through here.
"""

from __future__ import annotations

import collections
import threading
import typing as t
import weakref

import redis
import redis.exceptions

from tieredcache import lifecycle

__all__ = ["RETRY_THROUGH_CLIENT", "DirectCommands", "NoDirectConnection", "pack", "pack_set"]


class NoDirectConnection(Exception):
    """Every direct connection allowed is in use: the command goes through the client."""


# A failure of the connection itself: the command is sent again through the client, which
# applies its own retry policy (the connection was already disconnected). A timeout is not
# sent again: a call waits at most one socket_timeout.
RETRY_THROUGH_CLIENT = (
    redis.exceptions.ConnectionError,
    NoDirectConnection,
)


def pack(*args: bytes) -> bytes:
    """A command in the Redis protocol (RESP); every argument is bytes."""
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)


def pack_set(key: bytes, data: bytes, px: int | None, *, get: bool = False) -> bytes:
    """``SET key data [PX px] [GET]`` in the Redis protocol (``GET``: the reply is the value
    the key held before, Redis 6.2 or later)."""
    if px is None:
        command = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(key),
            key,
            len(data),
            data,
        )
    else:
        ms = b"%d" % px
        command = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nPX\r\n$%d\r\n%b\r\n" % (
            len(key),
            key,
            len(data),
            data,
            len(ms),
            ms,
        )
    if get:  # one more argument: patch the count, append GET
        count = 4 if px is None else 6
        command = b"*%d" % count + command[2:] + b"$3\r\nGET\r\n"
    return command


class DirectCommands:
    """Simple commands written straight to redis-py's connection layer.

    ``Redis.get`` spends more of its time in redis-py's own Python (pool checkout and
    check-in with their bookkeeping, the retry wrapper, response callbacks) than on the
    round trip to a nearby server. This sends a packed command on a connection and reads
    the reply, nothing else.

    Thread-safe: connections come from a free list of this object (``deque`` pop and
    append are atomic), each is used by one thread at a time, and only this object ever
    sends on them. A connection is made with the pool's own class and arguments (TLS,
    timeouts, credentials, health checks all apply) but is not counted in the pool, so the
    pool's other users never wait for it; at most ``max_connections`` of them are open.
    A connection whose command failed halfway is disconnected, never returned, so no
    caller can read another's reply; a connection failure raises for the caller to retry
    through the client (with redis-py's retry policy). Fork-safe: a child process forgets
    the parent's connections without closing them.
    """

    def __init__(self, pool: t.Any) -> None:
        self._pool = pool
        self._limit = int(getattr(pool, "max_connections", None) or 2**31)
        self._idle: collections.deque[tuple[t.Any, int]] = collections.deque()
        self._lock = threading.Lock()
        self._generation = 0
        self.open = 0
        _live_direct.add(self)

    @classmethod
    def for_client(cls, client: t.Any) -> DirectCommands | None:
        """An instance for ``client``, or ``None`` when its commands must go through it."""
        pool = getattr(client, "connection_pool", None)
        if type(client) is not redis.Redis or getattr(client, "connection", None) is not None:
            return None  # cluster, a subclass, or a single-connection client
        if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
            return None  # Sentinel and custom pools pick their servers themselves
        kwargs = getattr(pool, "connection_kwargs", {})
        if getattr(pool, "cache", None) is not None or kwargs.get("protocol") not in (
            None,
            2,
            "2",
        ):
            return None  # client-side caching and RESP3 push messages
        if kwargs.get("credential_provider") is not None:
            return None  # re-authentication is driven by pool events
        return cls(pool)

    def call(self, packed: bytes, replies: int = 1, *, errors_inline: bool = False) -> t.Any:
        """Send ``packed`` and return its reply (a list of them when ``replies > 1``).

        With ``errors_inline`` an error reply takes its place in the list as the
        :class:`redis.exceptions.ResponseError` it is, instead of being raised.

        :raises redis.exceptions.ResponseError: the server answered with an error.
        :raises redis.exceptions.ConnectionError: the connection failed (retry elsewhere).
        """
        try:
            conn, generation = self._idle.pop()
        except IndexError:
            conn, generation = self._connect()
        clean = False
        try:
            conn.send_packed_command((packed,))
            error = None
            if replies == 1:
                try:
                    result = conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    error = exc
            else:
                result = []
                for _ in range(replies):
                    try:
                        result.append(conn.read_response())
                    except redis.exceptions.ResponseError as exc:
                        if errors_inline:
                            result.append(exc)
                        else:
                            error = error or exc
            clean = True  # every reply was read: the connection can be used again
            if error is not None:
                raise error
            return result
        finally:
            if clean and generation == self._generation:
                self._idle.append((conn, generation))
            else:
                self._discard(conn)

    @property
    def in_use(self) -> int:
        """Connections carrying a command right now."""
        return max(0, self.open - len(self._idle))

    def _connect(self) -> tuple[t.Any, int]:
        with self._lock:
            if self.open >= self._limit:
                raise NoDirectConnection()
            self.open += 1
            generation = self._generation
        pool = self._pool
        try:
            return pool.connection_class(**pool.connection_kwargs), generation
        except BaseException:
            with self._lock:
                self.open -= 1
            raise

    def _discard(self, conn: t.Any) -> None:
        with self._lock:
            self.open -= 1
        try:
            conn.disconnect()
        except Exception:  # pragma: no cover - a socket that cannot even be closed
            pass

    def close(self) -> None:
        """Disconnect the idle connections; ones in use are disconnected when returned."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, collections.deque()
        for conn, _ in idle:
            self._discard(conn)

    def forget_after_fork(self) -> None:
        # The parent's sockets stay the parent's: drop them (redis-py closes a connection
        # inherited through a fork without shutting the parent's socket down).
        self._lock = threading.Lock()
        self._idle = collections.deque()
        self._generation += 1
        self.open = 0


_live_direct: weakref.WeakSet[DirectCommands] = weakref.WeakSet()


def _forget_direct_connections_after_fork() -> None:
    for direct in list(_live_direct):
        direct.forget_after_fork()


lifecycle.on_fork(_forget_direct_connections_after_fork, lifecycle.Stage.CONNECTIONS)
