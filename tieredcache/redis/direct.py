"""The direct protocol path: simple commands written on a connection's socket and their
replies parsed from what it reads (see :class:`DirectCommands`).

On a loopback server redis-py's own Python is about a third of a ``GET``; ``GET``, ``MGET``,
``SET`` and ``UNLINK`` of a plain client skip its command dispatch and its connection
layer's send and read wrappers, and go through here: one ``sendall``, then ``recv_into`` a
buffer of the connection's own until the replies are complete
(:class:`~tieredcache.redis.frames.FrameReader`). The connection itself is made and
connected by redis-py (TLS, credentials, database, timeouts).
"""

from __future__ import annotations

import collections
import math
import socket
import threading
import time
import typing as t
import weakref

import redis
import redis.connection
import redis.exceptions

from tieredcache import lifecycle
from tieredcache.redis.frames import FrameReader
from tieredcache.redis.frames import hiredis_pack_command as _pack_command

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
    if _pack_command is not None and len(args) > 4:  # a long command: hiredis packs it in C
        packed: bytes = _pack_command(args)
        return packed
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
    """Simple commands written straight to a connection's socket.

    ``Redis.get`` spends more of its time in redis-py's own Python (pool checkout and
    check-in with their bookkeeping, the retry wrapper, response callbacks, the
    connection's read wrappers) than on the round trip to a nearby server. This writes a
    packed command on a connection's socket and parses the replies from what ``recv_into``
    reads (:class:`~tieredcache.redis.frames.FrameReader`: ``hiredis`` when installed),
    nothing else.

    Thread-safe: connections come from a free list of this object (``deque`` pop and
    append are atomic), each is used by one thread at a time, and only this object ever
    sends on them. A connection is made and connected by the pool's own class with its
    arguments (TLS, timeouts, credentials, database, client name all apply) but is not
    counted in the pool, so the pool's other users never wait for it; at most
    ``max_connections`` of them are open. Where redis-py would PING a connection idle for
    longer than ``health_check_interval``, it is replaced by a new one. A connection of a
    class other than redis-py's own, or without a socket once connected, is used through
    its own ``send_packed_command`` and ``read_response`` instead. A connection whose
    command failed halfway (a timeout, a closed socket, bytes that are not RESP) is
    disconnected, never returned, so no caller can read another's reply; a connection
    failure raises for the caller to retry through the client (with redis-py's retry
    policy). Fork-safe: a child process forgets the parent's connections without closing
    them.

    :param use_hiredis: parse with ``hiredis`` when it is installed (``False``: the
        reader's own parser).
    :param read_size: the size of each connection's receive buffer; a longer reply takes
        several reads.
    :param timer: the monotonic clock that tells how long a connection was idle.
    """

    def __init__(
        self,
        pool: t.Any,
        *,
        use_hiredis: bool = True,
        read_size: int = 65536,
        timer: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._timer = timer
        self._limit = int(getattr(pool, "max_connections", None) or 2**31)
        self._use_hiredis = use_hiredis
        self._read_size = read_size
        self._idle: collections.deque[_Link] = collections.deque()
        self._lock = threading.Lock()
        self._generation = 0
        self.open = 0
        _live_direct.add(self)

    @classmethod
    def for_client(cls, client: t.Any, *, use_hiredis: bool = True) -> DirectCommands | None:
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
        return cls(pool, use_hiredis=use_hiredis)

    def call(self, packed: bytes, replies: int = 1, *, errors_inline: bool = False) -> t.Any:
        """Send ``packed`` and return its reply (a list of them when ``replies > 1``).

        With ``errors_inline`` an error reply takes its place in the list as the
        :class:`redis.exceptions.ResponseError` it is, instead of being raised.

        :raises redis.exceptions.ResponseError: the server answered with an error.
        :raises redis.exceptions.ConnectionError: the connection failed (retry elsewhere).
        :raises redis.exceptions.TimeoutError: no reply within the socket timeout.
        """
        now = self._timer()
        try:
            link = self._idle.pop()
        except IndexError:
            link = self._connect()
        else:
            # Idle for longer than the health check interval, or left over from before
            # close(): replaced by a new connection.
            if link.stale_at < now or link.generation != self._generation:
                self._discard(link)
                link = self._connect()
        clean = False
        try:
            if link.sock is None:
                got = _exchange_through_driver(link.conn, packed, replies)
                clean = True
            else:
                got = link.exchange(packed, replies)
                # Nothing read beyond the replies (as far as the reader tells): it can be reused.
                clean = len(got) == replies and not link.reader.pending
            if replies == 1:
                reply = got[0]
                if isinstance(reply, _ResponseError):
                    raise reply
                return reply
            result = got[:replies]
            if not errors_inline:
                for reply in result:
                    if isinstance(reply, _ResponseError):
                        raise reply
            return result
        finally:
            if clean and link.generation == self._generation:
                link.stale_at = now + link.check_after
                self._idle.append(link)
                if link.generation != self._generation:
                    self._drop_idle(link)  # close() ran meanwhile: it did not see this one
            else:
                self._discard(link)

    @property
    def in_use(self) -> int:
        """Connections carrying a command right now."""
        return max(0, self.open - len(self._idle))

    def _connect(self) -> _Link:
        with self._lock:
            if self.open >= self._limit:
                raise NoDirectConnection()
            self.open += 1
            generation = self._generation
        pool = self._pool
        conn = None
        options = dict(pool.connection_kwargs)
        if _HAS_PROTOCOL_OPTION:
            # RESP2, whatever the driver's default: RESP3 lets the server push frames
            # (invalidations, maintenance notifications) between replies, which a reply
            # read here would be taken for. Maintenance notifications need RESP3.
            options["protocol"] = 2
            for name in ("maint_notifications_config", "maint_notifications_pool_handler"):
                options.pop(name, None)
        try:
            conn = pool.connection_class(**options)
            conn.connect()
            sock = getattr(conn, "_sock", None)
            if (
                type(conn) not in _OWN_CONNECTIONS
                or not isinstance(sock, socket.socket)
                or str(getattr(conn, "protocol", 2)) != "2"
            ):
                return _Link(conn, generation)  # the driver reads its replies
            reader = FrameReader(use_hiredis=self._use_hiredis)
            link = _Link(conn, generation, sock, reader, bytearray(self._read_size))
            # Instead of the PING redis-py sends on a connection idle for longer than
            # health_check_interval, such a connection is replaced by a new one: a socket
            # the network dropped silently then costs no socket_timeout.
            link.check_after = float(getattr(conn, "health_check_interval", 0) or math.inf)
            return link
        except BaseException:
            with self._lock:
                self.open -= 1
            if conn is not None:
                _disconnect(conn)
            raise

    def _drop_idle(self, link: _Link) -> None:
        try:
            self._idle.remove(link)
        except ValueError:
            return  # taken by a caller, who discards it (its generation is old)
        self._discard(link)

    def _discard(self, link: _Link) -> None:
        with self._lock:
            self.open -= 1
        _disconnect(link.conn)

    def close(self) -> None:
        """Disconnect the idle connections; ones in use are disconnected when returned."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, collections.deque()
        for link in idle:
            self._discard(link)

    def forget_after_fork(self) -> None:
        # The parent's sockets stay the parent's: drop them (redis-py closes a connection
        # inherited through a fork without shutting the parent's socket down).
        self._lock = threading.Lock()
        self._idle = collections.deque()
        self._generation += 1
        self.open = 0


_ResponseError = redis.exceptions.ResponseError

#: redis-py 5 and later take the protocol version as a connection option.
_HAS_PROTOCOL_OPTION = int(redis.__version__.split(".")[0]) >= 5

#: The connection classes whose socket carries nothing but the commands sent on it.
_OWN_CONNECTIONS = (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)


class _Link:
    """One direct connection: redis-py's connection and, when its socket is read here, the
    socket, a reader and a receive buffer of its own."""

    __slots__ = (
        "buffer",
        "check_after",
        "conn",
        "generation",
        "reader",
        "sock",
        "stale_at",
        "where",
    )

    def __init__(
        self,
        conn: t.Any,
        generation: int,
        sock: socket.socket | None = None,
        reader: FrameReader | None = None,
        buffer: bytearray | None = None,
    ) -> None:
        self.conn = conn
        self.generation = generation
        self.sock = sock
        self.reader: t.Any = reader
        self.buffer = buffer
        #: Seconds idle after which the connection is replaced (the driver's own health
        #: checks apply to one read through the driver), and when that will be.
        self.check_after = math.inf
        self.stale_at = math.inf
        host = getattr(conn, "host", None)
        self.where = getattr(conn, "path", None) if host is None else f"{host}:{conn.port}"

    def exchange(self, packed: bytes, replies: int) -> list[t.Any]:
        """Write ``packed``, then read until ``replies`` replies are complete; error replies
        are in the list as exceptions."""
        sock = self.sock
        reader = self.reader
        buffer = self.buffer
        assert sock is not None and buffer is not None
        got: list[t.Any] = []
        doing = "writing to"
        try:
            sock.sendall(packed)
            doing = "reading from"
            while len(got) < replies:
                size = sock.recv_into(buffer)
                if not size:
                    raise redis.exceptions.ConnectionError(
                        f"Error while reading from {self.where}: closed by the server"
                    )
                reader.feed_from(buffer, size)
                got += reader.frames()
        except OSError as exc:  # socket.timeout is an OSError (TimeoutError) too
            if isinstance(exc, socket.timeout) and exc.errno is None:
                raise redis.exceptions.TimeoutError(f"Timeout {doing} {self.where}") from exc
            raise redis.exceptions.ConnectionError(
                f"Error {exc.errno} while {doing} {self.where}: {exc.strerror or exc}"
            ) from exc
        for i, reply in enumerate(got):
            if isinstance(reply, _ResponseError):
                got[i] = reply = _error(str(reply))
                if isinstance(reply, redis.exceptions.ConnectionError):
                    raise reply  # LOADING, NOAUTH ...: the client's retry policy decides
        return got


def _exchange_through_driver(conn: t.Any, packed: bytes, replies: int) -> list[t.Any]:
    """What :meth:`_Link.exchange` does, with redis-py's connection layer (health checks)."""
    conn.send_packed_command((packed,))
    got: list[t.Any] = []
    for _ in range(replies):
        try:
            got.append(conn.read_response())
        except redis.exceptions.ResponseError as exc:
            got.append(exc)
    return got


def _disconnect(conn: t.Any) -> None:
    try:
        conn.disconnect()
    except Exception:  # pragma: no cover - a socket that cannot even be closed
        pass


def _error(message: str) -> Exception:
    """The exception redis-py's parser makes of an error reply (``WRONGTYPE ...``)."""
    return _PARSER.parse_error(message)  # type: ignore[no-any-return]


# An instance, not the class: older redis-py versions define parse_error on the instance.
_PARSER = redis.connection.DefaultParser(socket_read_size=1)


_live_direct: weakref.WeakSet[DirectCommands] = weakref.WeakSet()


def _forget_direct_connections_after_fork() -> None:
    for direct in list(_live_direct):
        direct.forget_after_fork()


lifecycle.on_fork(_forget_direct_connections_after_fork, lifecycle.Stage.CONNECTIONS)
