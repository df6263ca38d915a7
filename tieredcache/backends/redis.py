"""
Redis
=====

:class:`RedisBackend` stores entries in Redis (standalone, Sentinel or Cluster) through a
pooled ``redis`` client.

Every value is kept as an :class:`~tieredcache.serializers.EntryCodec` envelope, so a hit
knows its exact ``expires_at``, ``stale_at`` and ``version``. The server-side expiry is set
too (``PX``, in milliseconds, relative to the backend's own clock and rounded up), so Redis
frees expired entries by itself; a TTL under one second still expires on the server.

Reads are one ``GET`` or one ``MGET``; batch writes are one non-transactional pipeline.
``add`` and ``touch`` are Lua scripts that read the envelope header on the server, so an
entry that Redis still holds but whose envelope has expired (by the backend's clock) counts
as absent, as does a value that is not an envelope at all. ``incr`` is an optimistic
``WATCH``/``MULTI`` transaction, exact for integers of any size. ``clear`` removes only
this backend's keys (``SCAN`` + ``UNLINK``), never ``FLUSHDB``.

With a plain (non-cluster, non-Sentinel) client, ``GET``, ``MGET``, ``SET`` and ``UNLINK``
skip redis-py's command dispatch and are written straight to its connection layer: on a
loopback server redis-py's own Python is about a third of a ``GET``, and the tier must not
cost more than the client it is built on. See :class:`_DirectCommands` for how that stays
thread-safe and fork-safe.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import struct
import threading
import typing as t
import urllib.parse
import weakref

from tieredcache import lifecycle
from tieredcache.backends.base import Backend
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer
from tieredcache.stats import COUNTERS

try:
    import redis
    import redis.backoff
    import redis.cluster
    import redis.connection
    import redis.exceptions
    import redis.retry
    import redis.sentinel
except ImportError as exc:  # pragma: no cover - redis is a declared dependency
    raise ConfigurationError(
        "RedisBackend needs the 'redis' package; install it with `pip install redis`"
    ) from exc

__all__ = ["RedisBackend"]

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
"""The URL schemes :meth:`RedisBackend.from_url` accepts."""

_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_SCAN_COUNT = 1000
_SETS_INDEX = COUNTERS.index("sets")
_HEALTH_CHECK_INTERVAL = 30
# Float noise: at epoch magnitudes a double resolves about 0.24 µs, so ``(now + 0.25) - now``
# may come out a hair above 250 ms; ceil() must not turn that into 251.
_PX_SLACK_MS = 0.001
_MAX_PX = float(2**62)  # ms; far beyond any TTL that validate_ttl lets through

# The Lua scripts read the envelope header laid out by EntryCodec: magic b"TC", format 1,
# flags (bit 1: has expires_at), expires_at, stale_at (big-endian doubles), version (int64).
_HEADER_SIZE = 28
_MAGIC = b"TC\x01"
assert EntryCodec.header_size == _HEADER_SIZE, "the Lua scripts assume a 28-byte header"
assert EntryCodec.header(None, None, 0).startswith(_MAGIC)

# KEYS[1]: the key. ARGV: envelope, now, px ("" = no expiry). Returns 1 if stored.
_ADD_SCRIPT = r"""
local current = redis.call('GET', KEYS[1])
if current and #current >= 28 and string.sub(current, 1, 3) == 'TC\1' then
  local flags = string.byte(current, 4)
  local expires_at = struct.unpack('>d', current, 5)
  local stale_at = struct.unpack('>d', current, 13)
  -- A time that is not a finite number (NaN, infinities) is a corrupt header: absent.
  local corrupt = (flags % 2 == 1 and (expires_at ~= expires_at or expires_at == math.huge
      or expires_at == -math.huge))
    or (flags % 4 >= 2 and (stale_at ~= stale_at or stale_at == math.huge
      or stale_at == -math.huge))
  if not corrupt then
    if flags % 2 == 0 then return 0 end
    if expires_at > tonumber(ARGV[2]) then return 0 end
  end
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
return 1
"""

# KEYS[1]: the key. ARGV: now, has-expiry flag ("0"/"1"), expires_at as 8 packed bytes,
# px ("" = no expiry). Rewrites the header's flags and expires_at, keeping the rest.
_TOUCH_SCRIPT = r"""
local current = redis.call('GET', KEYS[1])
if not current or #current < 28 or string.sub(current, 1, 3) ~= 'TC\1' then return 0 end
local flags = string.byte(current, 4)
if flags % 2 == 1 then
  local expires_at = struct.unpack('>d', current, 5)
  -- A time that is not a finite number (NaN, infinities) is a corrupt header: absent.
  if expires_at ~= expires_at or expires_at == math.huge or expires_at == -math.huge then
    return 0
  end
  if expires_at <= tonumber(ARGV[1]) then return 0 end
end
if flags % 4 >= 2 then
  local stale_at = struct.unpack('>d', current, 13)
  if stale_at ~= stale_at or stale_at == math.huge or stale_at == -math.huge then return 0 end
end
flags = flags - (flags % 2) + tonumber(ARGV[2])
local updated = string.sub(current, 1, 3) .. string.char(flags) .. ARGV[3]
  .. string.sub(current, 13)
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], updated)
else
  redis.call('SET', KEYS[1], updated, 'PX', ARGV[4])
end
return 1
"""

# KEYS: one SCAN batch. Unlinks the keys that hold a tieredcache envelope; returns how many.
_CLEAR_ENVELOPES_SCRIPT = r"""
local removed = 0
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'string'
      and redis.call('GETRANGE', key, 0, 2) == 'TC\1' then
    redis.call('UNLINK', key)
    removed = removed + 1
  end
end
return removed
"""

_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)


class RedisBackend(Backend):
    """A layer in Redis: standalone, Sentinel or Cluster.

    Thread-safe: the client's connection pool hands each thread its own connection. Also
    fork-safe: redis-py pools notice a changed PID and open new connections in the child, so
    a backend may be built before a pre-forking server forks.

    :param client: a ready ``redis.Redis`` (or ``RedisCluster``) client. The caller owns it:
        :meth:`close` leaves it open. ``None`` builds a pooled client for
        ``redis://localhost:6379/0``, owned by the backend. The client must return bytes
        (``decode_responses=False``).
    :param prefix: prepended to every key; :meth:`clear` removes only keys under it.
    :param serializer: the payload serializer (pickle by default).
    :param default_ttl: the TTL in seconds used when a call passes none.
    :param timer: the clock, in epoch seconds; server-side expiries are computed from it.
    :raises ConfigurationError: ``prefix`` is not a str, or the client decodes responses.
    """

    name = "redis"
    _driver_errors = _DRIVER_ERRORS

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster | None = None,
        *,
        prefix: str = "",
        serializer: Serializer | None = None,
        default_ttl: float | None = None,
        timer: Timer | None = None,
    ) -> None:
        super().__init__(default_ttl=default_ttl, timer=timer)
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
        self._closers: list[t.Callable[[], None]] = []
        if client is None:
            client, self._closers = _connect(_parse_url("redis://localhost:6379/0"), {})
        elif _decodes_responses(client):
            raise ConfigurationError(
                "RedisBackend needs a client that returns bytes (decode_responses=False)"
            )
        self.prefix = prefix
        self.codec = EntryCodec(serializer)
        self._client: t.Any = client
        self._prefix_bytes = prefix.encode("utf-8", "surrogatepass")
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._target = _describe(client)
        self._add_script = client.register_script(_ADD_SCRIPT)
        self._touch_script = client.register_script(_TOUCH_SCRIPT)
        self._clear_script = client.register_script(_CLEAR_ENVELOPES_SCRIPT)
        self._direct = _DirectCommands.for_client(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "",
        serializer: Serializer | None = None,
        socket_timeout: float | None = 5.0,
        connect_timeout: float | None = 2.0,
        max_connections: int = 64,
        default_ttl: float | None = None,
        timer: Timer | None = None,
        **client_options: t.Any,
    ) -> RedisBackend:
        """A backend with a pooled client of its own, closed by :meth:`close`.

        Accepted URLs:

        - ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
          ``unix://[[user]:password@]/path/to/socket[?db=0]``, as redis-py reads them;
        - ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``:
          the master of ``service_name``, found through the listed sentinels (port 26379
          by default). The password authenticates to the master; pass
          ``sentinel_kwargs={...}`` to configure the connections to the sentinels;
        - ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis Cluster
          reached through these startup nodes (it connects at once).

        :param socket_timeout: seconds a command may wait for its reply.
        :param connect_timeout: seconds a connection attempt may take.
        :param max_connections: the most connections the pool opens.
        :param client_options: more keyword arguments for the redis-py client.

        The backend owns this client: :meth:`close` disconnects its pool, and a later call
        connects again.
        :raises ConfigurationError: an unsupported scheme, a malformed URL or bad options.
        :raises BackendUnavailableError: a cluster could not be reached.
        """
        if client_options.get("decode_responses"):
            raise ConfigurationError("RedisBackend needs decode_responses=False")
        options = dict(
            client_options,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
        )
        client, closers = _connect_url(url, options)
        try:
            backend = cls(
                client, prefix=prefix, serializer=serializer, default_ttl=default_ttl, timer=timer
            )
        except BaseException:
            _close_all(closers)
            raise
        backend._closers = closers
        return backend

    # -- helpers ----------------------------------------------------------------------

    @property
    def client(self) -> t.Any:
        """The redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``)."""
        return self._client

    @property
    def serializer(self) -> Serializer:
        """The payload serializer."""
        return self.codec.serializer

    def _key(self, key: str) -> bytes:
        return self._prefix_bytes + key.encode("utf-8", "surrogatepass")

    def _px(self, expires_at: float | None) -> int | None:
        """The server-side expiry in ms from now by the backend's clock (``None``: none)."""
        if expires_at is None:
            return None
        # Capped so that Redis accepts it (its absolute expiry must fit a signed 64-bit
        # count of ms); the envelope keeps the exact expiry.
        ms = min((expires_at - self.timer()) * 1000.0 - _PX_SLACK_MS, _MAX_PX)
        return max(1, math.ceil(ms))

    # -- hooks ------------------------------------------------------------------------

    def _get(self, key: str) -> Entry | None:
        full = self._key(key)
        direct = self._direct
        try:
            if direct is None:
                data = self._client.get(full)
            else:
                try:
                    data = direct.call(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(full), full))
                except _RETRY_THROUGH_CLIENT:
                    data = self._client.get(full)
        except redis.exceptions.ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            # Someone else's list, hash, ... under this key: not an entry, so a miss, counted
            # and logged like any payload that is not an envelope (MGET reads it as nil).
            self._corrupt(key, DeserializationError(f"the key holds another Redis type: {exc}"))
            return None
        if data is None:
            return None
        return self._decode(self.codec, key, data)

    def _get_many(self, keys: list[str]) -> dict[str, Entry]:
        if len(keys) == 1:
            entry = self._get(keys[0])
            return {} if entry is None else {keys[0]: entry}
        full = [self._key(key) for key in keys]
        direct = self._direct
        if self._cluster:
            values = self._client.mget_nonatomic(full)
        elif direct is None:
            values = self._client.mget(full)
        else:
            try:
                values = direct.call(_pack(b"MGET", *full))
            except _RETRY_THROUGH_CLIENT:
                values = self._client.mget(full)
        found = {}
        decode = self.codec.decode
        for key, data in zip(keys, values):
            if data is not None:
                try:
                    found[key] = decode(data)
                except DeserializationError as exc:
                    self._corrupt(key, exc)
        return found

    def _set(self, key: str, entry: Entry) -> None:
        data = self.codec.encode(entry)  # before any I/O: a bad value writes nothing
        full = self._key(key)
        px = self._px(entry.expires_at)
        direct = self._direct
        if direct is None:
            self._client.set(full, data, px=px)
            return
        try:
            direct.call(_pack_set(full, data, px))
        except _RETRY_THROUGH_CLIENT:
            self._client.set(full, data, px=px)

    def _set_many(self, items: dict[str, Entry]) -> None:
        encoded = [(self._key(k), self.codec.encode(e), e.expires_at) for k, e in items.items()]
        direct = self._direct
        if direct is not None:
            # One write of every SET, then every reply: what a non-transactional pipeline
            # does, without building it.
            commands = b"".join(
                [_pack_set(full, data, self._px(expires_at)) for full, data, expires_at in encoded]
            )
            try:
                direct.call(commands, replies=len(encoded))
                return
            except _RETRY_THROUGH_CLIENT:
                pass
        with self._client.pipeline(transaction=False) as pipe:
            for full, data, expires_at in encoded:
                pipe.set(full, data, px=self._px(expires_at))
            pipe.execute()

    def set_entries_announcing(
        self,
        items: t.Mapping[str, Entry],
        announcement: t.Callable[[dict[str, bytes]], tuple[bytes, bytes, bool]],
    ) -> None:
        """Store ``items`` and publish their announcement in the same round trip.

        ``announcement(payloads)`` gets each key's encoded envelope (before any I/O) and
        returns ``(channel, message, atomic)``. The ``PUBLISH`` follows the ``SET`` commands
        on one connection; with ``atomic`` the whole is one ``MULTI``/``EXEC`` transaction,
        so that nothing is published unless every write is applied, and no other client's
        write or message comes in between (messages then follow the order of the writes).
        Items must be unexpired (the composition checks). Not for cluster clients.

        :raises BackendError: the store failed; the announcement may not have been sent.
        """
        encoded = [(self._key(k), self.codec.encode(e), e) for k, e in items.items()]
        payloads = {k: data for k, (_, data, _) in zip(items, encoded)}
        channel, message, atomic = announcement(payloads)
        self._call(self._set_announcing, encoded, channel, message, atomic)
        self._counters.slot()[_SETS_INDEX] += len(encoded)

    def _set_announcing(
        self,
        encoded: list[tuple[bytes, bytes, Entry]],
        channel: bytes,
        message: bytes,
        atomic: bool,
    ) -> None:
        direct = self._direct
        if direct is not None and not self._cluster:
            parts = [b"*1\r\n$5\r\nMULTI\r\n"] if atomic else []
            parts.extend(_pack_set(full, data, self._px(e.expires_at)) for full, data, e in encoded)
            parts.append(_pack(b"PUBLISH", channel, message))
            if atomic:
                parts.append(b"*1\r\n$4\r\nEXEC\r\n")
            replies = len(encoded) + 1 + (2 if atomic else 0)
            try:
                result = direct.call(b"".join(parts), replies=replies)
            except _RETRY_THROUGH_CLIENT:
                pass
            else:
                if atomic and result[-1] is None:  # pragma: no cover - no WATCH is used
                    raise redis.exceptions.ResponseError("EXEC aborted")
                return
        with self._client.pipeline(transaction=atomic) as pipe:
            for full, data, e in encoded:
                pipe.set(full, data, px=self._px(e.expires_at))
            pipe.publish(channel, message)
            pipe.execute()

    def _add(self, key: str, entry: Entry) -> bool:
        data = self.codec.encode(entry)
        if self.codec.signs:
            # Only a verified entry counts as present, and only the client can verify.
            return self._add_signed(key, data, entry.expires_at)
        px = self._px(entry.expires_at)
        args: list[bytes | str] = [data, repr(float(self.timer())), "" if px is None else str(px)]
        return bool(self._add_script(keys=[self._key(key)], args=args))

    def _delete(self, key: str) -> bool:
        return self._delete_many([key]) > 0

    def _delete_many(self, keys: list[str]) -> int:
        full = [self._key(key) for key in keys]
        direct = self._direct
        if direct is not None and not self._cluster:
            try:
                return int(direct.call(_pack(b"UNLINK", *full)))
            except _RETRY_THROUGH_CLIENT:
                pass
        return int(self._client.unlink(*full))

    def _incr(self, key: str, delta: int) -> int:
        full = self._key(key)
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(full)
                    data = pipe.get(full)
                    entry = None if data is None else self._decode(self.codec, key, data)
                    if entry is None or entry.expired(self.timer()):
                        raise KeyError(key)
                    value = entry.value
                    if isinstance(value, bool) or not isinstance(value, int):
                        raise TypeError(f"the value under {key!r} is not an integer")
                    result = value + delta
                    updated = Entry(result, entry.expires_at, next_version(), entry.stale_at)
                    payload = self.codec.encode(updated)
                    pipe.multi()
                    pipe.set(full, payload, px=self._px(updated.expires_at))
                    pipe.execute()
                    return result
                except redis.exceptions.WatchError:
                    continue  # another writer got in between: read again

    def _touch(self, key: str, expires_at: float | None) -> bool:
        if self.codec.signs:
            # The signature covers the header: only a holder of the secret can rewrite it.
            return self._touch_signed(key, expires_at)
        px = self._px(expires_at)
        args: list[bytes | str] = [
            repr(float(self.timer())),
            "0" if expires_at is None else "1",
            struct.pack(">d", 0.0 if expires_at is None else expires_at),
            "" if px is None else str(px),
        ]
        return bool(self._touch_script(keys=[self._key(key)], args=args))

    def _add_signed(self, key: str, data: bytes, expires_at: float | None) -> bool:
        """``add`` over signed envelopes: read and verify, then write under WATCH."""
        full = self._key(key)
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(full)
                    current = pipe.get(full)
                    held = None if current is None else self._decode(self.codec, key, current)
                    if held is not None and not held.expired(self.timer()):
                        return False
                    pipe.multi()
                    pipe.set(full, data, px=self._px(expires_at))
                    pipe.execute()
                    return True
                except redis.exceptions.WatchError:
                    continue  # another writer got in between: read again

    def _touch_signed(self, key: str, expires_at: float | None) -> bool:
        """``touch`` of a signed envelope: read, verify, re-sign and write back under WATCH."""
        full = self._key(key)
        with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(full)
                    data = pipe.get(full)
                    entry = None if data is None else self._decode(self.codec, key, data)
                    if entry is None or entry.expired(self.timer()):
                        return False
                    updated = self.codec.retime(data, expires_at)
                    pipe.multi()
                    pipe.set(full, updated, px=self._px(expires_at))
                    pipe.execute()
                    return True
                except redis.exceptions.WatchError:
                    continue  # another writer got in between: read again

    def _clear(self) -> None:
        pattern = _glob_escape(self._prefix_bytes) + b"*"
        for batch in self._scan(pattern):
            if self._prefix_bytes:
                self._client.unlink(*batch)
            else:
                # No prefix: the database may hold other data; remove only our envelopes.
                self._unlink_envelopes(batch)

    def _scan(self, pattern: bytes) -> t.Iterator[list[bytes]]:
        """The keys matching ``pattern``, one SCAN batch at a time."""
        if self._cluster:
            # RedisCluster iterates every primary node itself.
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT):
                batch.append(key)
                if len(batch) >= _SCAN_COUNT:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        cursor = 0
        while True:
            cursor, keys = self._client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            if keys:
                yield keys
            if not cursor:
                return

    def _unlink_envelopes(self, keys: list[bytes]) -> None:
        if not self._cluster:
            self._clear_script(keys=keys)
            return
        by_slot: dict[int, list[bytes]] = {}
        for key in keys:  # a script's keys must share one slot in a cluster
            by_slot.setdefault(self._client.keyslot(key), []).append(key)
        for group in by_slot.values():
            self._clear_script(keys=group)

    def _close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        _close_all(self._closers)

    def _translate(self, exc: BaseException) -> BackendError:
        return _translate(exc, self._target)

    @property
    def call_timeout(self) -> float | None:
        """The longest one call waits: the connect and the reply timeouts."""
        kwargs = getattr(getattr(self._client, "connection_pool", None), "connection_kwargs", {})
        read = kwargs.get("socket_timeout")
        if not isinstance(read, (int, float)):
            return None
        connect = kwargs.get("socket_connect_timeout")
        return float(read) + (float(connect) if isinstance(connect, (int, float)) else 0.0)

    def _stats_extra(self) -> dict[str, t.Any]:
        figures: dict[str, t.Any] = {"prefix": self.prefix, "target": self._target}
        pool = getattr(self._client, "connection_pool", None)
        idle = getattr(pool, "_available_connections", None)
        busy = getattr(pool, "_in_use_connections", None)
        direct = 0 if self._direct is None else self._direct.open
        direct_busy = 0 if self._direct is None else self._direct.in_use
        if idle is not None and busy is not None:
            # Every connection the backend holds: the pool's plus the direct ones.
            figures["pool_connections"] = len(idle) + len(busy) + direct
            figures["pool_in_use"] = len(busy) + direct_busy
            figures["pool_max_connections"] = getattr(pool, "max_connections", None)
        if self._direct is not None:
            figures["direct_connections"] = direct
        return figures

    def __repr__(self) -> str:
        return f"<RedisBackend {self._target} prefix={self.prefix!r}>"


# -- commands on the connection layer ----------------------------------------------------


class _NoDirectConnection(Exception):
    """Every direct connection allowed is in use: the command goes through the client."""


# A failure of the connection itself: the command is sent again through the client, which
# applies its own retry policy (the connection was already disconnected). A timeout is not
# sent again: a call waits at most one socket_timeout.
_RETRY_THROUGH_CLIENT = (
    redis.exceptions.ConnectionError,
    _NoDirectConnection,
)


def _pack(*args: bytes) -> bytes:
    """A command in the Redis protocol (RESP); every argument is bytes."""
    parts = [b"*%d\r\n" % len(args)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
    return b"".join(parts)


def _pack_set(key: bytes, data: bytes, px: int | None) -> bytes:
    if px is None:
        return b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(key),
            key,
            len(data),
            data,
        )
    ms = b"%d" % px
    return b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nPX\r\n$%d\r\n%b\r\n" % (
        len(key),
        key,
        len(data),
        data,
        len(ms),
        ms,
    )


class _DirectCommands:
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
    def for_client(cls, client: t.Any) -> _DirectCommands | None:
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

    def call(self, packed: bytes, replies: int = 1) -> t.Any:
        """Send ``packed`` and return its reply (a list of them when ``replies > 1``).

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
                raise _NoDirectConnection()
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

    def _forget_after_fork(self) -> None:
        # The parent's sockets stay the parent's: drop them (redis-py closes a connection
        # inherited through a fork without shutting the parent's socket down).
        self._lock = threading.Lock()
        self._idle = collections.deque()
        self._generation += 1
        self.open = 0


_live_direct: weakref.WeakSet[_DirectCommands] = weakref.WeakSet()


def _forget_direct_connections_after_fork() -> None:
    for direct in list(_live_direct):
        direct._forget_after_fork()


lifecycle.on_fork(_forget_direct_connections_after_fork, lifecycle.Stage.CONNECTIONS)


# -- errors ---------------------------------------------------------------------------


# Failures of the server or of the way to it: the tier cannot answer now. A ConnectionError
# covers BusyLoadingError, AuthenticationError, MaxConnectionsError (pool exhausted),
# MaxClientsReachedError and MasterNotFoundError; InvalidResponse is a connection whose
# protocol stream broke; CLUSTERDOWN, MASTERDOWN and TRYAGAIN are a cluster that cannot serve
# the slot now, although they arrive as error replies.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.InvalidResponse,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
    OSError,
)


def _translate(exc: BaseException, target: str) -> BackendError:
    """The most specific ``BackendError`` for a driver exception."""
    message = f"{type(exc).__name__}: {exc} ({target})"
    cls: type[BackendError]
    if isinstance(exc, (redis.exceptions.TimeoutError, TimeoutError)):
        cls = BackendTimeoutError
    elif isinstance(exc, _UNAVAILABLE):
        cls = BackendUnavailableError
    elif isinstance(exc, redis.exceptions.ResponseError):
        # The server answered about this command (WRONGTYPE, OOM, READONLY, NOSCRIPT...):
        # that key's error, not a sign that the server is down.
        cls = BackendResponseError
    else:
        cls = BackendError  # a client-side error (DataError...): neither of the above
    return cls(message, backend=RedisBackend.name)


# -- URLs and clients -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _RedisTarget:
    """A parsed connection URL."""

    #: ``"redis"`` (redis://, rediss://, unix://), ``"sentinel"`` or ``"cluster"``.
    kind: str
    #: The URL itself, for the kinds redis-py parses.
    url: str = dataclasses.field(default="", repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def _parse_url(url: str) -> _RedisTarget:
    """Parse a connection URL (see :meth:`RedisBackend.from_url`).

    :raises ConfigurationError: an unsupported scheme or a malformed URL.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"the Redis URL must be a str, not {type(url).__name__}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return _RedisTarget("redis", url=url)
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise ConfigurationError(
            f"unsupported Redis URL {_redact(url)!r}: the scheme must be one of "
            + ", ".join(SCHEMES)
        )
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"{scheme}:// URLs take no query string or fragment; pass options as keyword "
            f"arguments ({_redact(url)!r})"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if has_password else None
    default_port = _SENTINEL_PORT if scheme == "redis+sentinel" else _REDIS_PORT
    nodes = tuple(_parse_host(spec, default_port, url) for spec in hostlist.split(","))
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    if scheme == "redis+cluster":
        if segments not in ([], ["0"]):
            raise ConfigurationError(
                f"a Redis Cluster has only database 0; got the path {parts.path!r} "
                f"in {_redact(url)!r}"
            )
        return _RedisTarget("cluster", nodes=nodes, username=username, password=password)
    if not segments or len(segments) > 2:
        raise ConfigurationError(
            f"a sentinel URL needs /service_name[/db] after the hosts: {_redact(url)!r}"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigurationError(f"the database must be a number, not {segments[1]!r}")
        db = int(segments[1])
    return _RedisTarget(
        "sentinel",
        nodes=nodes,
        service_name=segments[0],
        db=db,
        username=username,
        password=password,
    )


def _parse_host(spec: str, default_port: int, url: str) -> tuple[str, int]:
    spec = spec.strip()
    if spec.startswith("["):  # [IPv6]:port
        host, _, rest = spec[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port_text = spec.partition(":")
    if not host:
        raise ConfigurationError(f"a host is missing in {_redact(url)!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"bad port {port_text!r} in {_redact(url)!r}")
    return host, int(port_text)


def _redact(url: str) -> str:
    """``url`` without its password, query string and fragment (they may hold secrets)."""
    base = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = base.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at:
        return base
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


def _host_port(host: str, port: t.Any) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_url(url: str, options: dict[str, t.Any]) -> tuple[t.Any, list[t.Callable[[], None]]]:
    """A client for a Redis URL, and what closes it; every ``from_url`` builds with this.

    :raises ConfigurationError: an unsupported URL, or an option redis-py refuses.
    :raises BackendError: the client could not be built (a cluster that cannot be reached).
    """
    target = _parse_url(url)
    try:
        return _connect(target, options)
    except _DRIVER_ERRORS as exc:
        raise _translate(exc, _redact(url)) from exc
    except (TypeError, ValueError) as exc:  # redis-py refusing the URL or an option
        raise ConfigurationError(f"cannot use {_redact(url)!r}: {exc}") from exc


def _connect(
    target: _RedisTarget, options: dict[str, t.Any]
) -> tuple[t.Any, list[t.Callable[[], None]]]:
    """A client for ``target``, and what closes it."""
    options = dict(options)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("max_connections", 64)
    if target.kind == "redis":
        options.setdefault("health_check_interval", _HEALTH_CHECK_INTERVAL)
        # A broken connection (the server restarted, an idle socket was closed) fails at
        # once and is worth one retry on a new connection; a timeout is not retried, so a
        # call waits at most one socket_timeout (redis-py's default retries timeouts too).
        options.setdefault(
            "retry",
            redis.retry.Retry(
                redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
            ),
        )
        client = redis.Redis.from_url(target.url, **options)
        return client, [client.close]
    if target.username is not None:
        options.setdefault("username", target.username)
    if target.password is not None:
        options.setdefault("password", target.password)
    if target.kind == "cluster":
        # redis-py retries a cluster command ten times after a connection error or timeout,
        # so a hung master would hold each call for eleven socket timeouts. Retry once, at
        # once: the client re-reads the slot map in between, which covers a moved master.
        options.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 1))
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
        cluster = redis.cluster.RedisCluster(startup_nodes=nodes, **options)
        return cluster, [cluster.close]
    options.setdefault("health_check_interval", _HEALTH_CHECK_INTERVAL)
    max_connections = options.pop("max_connections")
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        # Without a retry of its own, an unreachable sentinel fails over to the next one at
        # once (redis-py's default would retry each one ten times, with backoff).
        sentinel_kwargs = {
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        }
    manager_options = {
        name: options.pop(name)
        for name in ("min_other_sentinels", "force_master_ip")
        if name in options
    }
    sentinel = redis.sentinel.Sentinel(
        list(target.nodes), sentinel_kwargs=sentinel_kwargs, **manager_options, **options
    )
    assert target.service_name is not None  # the URL parser refuses a sentinel URL without one
    master = sentinel.master_for(target.service_name, db=target.db, max_connections=max_connections)
    return master, [master.close, *(s.close for s in sentinel.sentinels)]


def _close_all(closers: list[t.Callable[[], None]]) -> None:
    errors = []
    for close in closers:
        try:
            close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def _decodes_responses(client: t.Any) -> bool:
    try:
        return bool(client.get_encoder().decode_responses)
    except Exception:
        return False


def _describe(client: t.Any) -> str:
    """Where ``client`` connects, without credentials."""
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            hosts = ",".join(_host_port(n.host, n.port) for n in client.get_nodes())
            return f"redis+cluster://{hosts}"
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        db = kwargs.get("db", 0)
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            hosts = ",".join(
                _host_port(
                    s.connection_pool.connection_kwargs.get("host", "localhost"),
                    s.connection_pool.connection_kwargs.get("port", _SENTINEL_PORT),
                )
                for s in pool.sentinel_manager.sentinels
            )
            return f"redis+sentinel://{hosts}/{pool.service_name}/{db}"
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}?db={db}"
        tls = issubclass(pool.connection_class, redis.connection.SSLConnection)
        host = _host_port(kwargs.get("host", "localhost"), kwargs.get("port", _REDIS_PORT))
        return f"{'rediss' if tls else 'redis'}://{host}/{db}"
    except Exception:
        return type(client).__name__


def _glob_escape(raw: bytes) -> bytes:
    """``raw`` with Redis glob metacharacters escaped, for ``SCAN MATCH``."""
    out = bytearray()
    for byte in raw:
        if byte in b"\\*?[]^-":
            out += b"\\"
        out.append(byte)
    return bytes(out)
