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
cost more than the client it is built on. See :class:`DirectCommands` for how that stays
thread-safe and fork-safe.
"""

from __future__ import annotations

import math
import re
import struct
import typing as t

from tieredcache import envelope
from tieredcache.backends.base import Backend
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.errors import BackendError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.keyglob import compile_glob
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer
from tieredcache.stats import COUNTERS

try:
    import redis
    import redis.cluster
    import redis.exceptions
except ImportError as exc:  # pragma: no cover - redis is a declared dependency
    raise ConfigurationError(
        "RedisBackend needs the 'redis' package; install it with `pip install redis`"
    ) from exc

from tieredcache.redis.connect import DRIVER_ERRORS
from tieredcache.redis.connect import SCHEMES
from tieredcache.redis.connect import close_all
from tieredcache.redis.connect import connect
from tieredcache.redis.connect import connect_url
from tieredcache.redis.connect import decodes_responses
from tieredcache.redis.connect import describe
from tieredcache.redis.connect import parse_url
from tieredcache.redis.connect import translate
from tieredcache.redis.direct import RETRY_THROUGH_CLIENT
from tieredcache.redis.direct import DirectCommands
from tieredcache.redis.direct import pack
from tieredcache.redis.direct import pack_set
from tieredcache.redis.scripts import ADD_SCRIPT
from tieredcache.redis.scripts import CLEAR_ENVELOPES_SCRIPT
from tieredcache.redis.scripts import TOUCH_SCRIPT

__all__ = ["SCHEMES", "RedisBackend"]

_SCAN_COUNT = 1000
_SETS_INDEX = COUNTERS.index("sets")
# Float noise: at epoch magnitudes a double resolves about 0.24 µs, so ``(now + 0.25) - now``
# may come out a hair above 250 ms; ceil() must not turn that into 251.
_PX_SLACK_MS = 0.001
_MAX_PX = float(2**62)  # ms; far beyond any TTL that validate_ttl lets through


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
    _driver_errors = DRIVER_ERRORS

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
            client, self._closers = connect(parse_url("redis://localhost:6379/0"), {})
        elif decodes_responses(client):
            raise ConfigurationError(
                "RedisBackend needs a client that returns bytes (decode_responses=False)"
            )
        self.prefix = prefix
        self.codec = EntryCodec(serializer)
        self._client: t.Any = client
        self._prefix_bytes = prefix.encode("utf-8", "surrogatepass")
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        self._target = describe(client)
        self._add_script = client.register_script(ADD_SCRIPT)
        self._touch_script = client.register_script(TOUCH_SCRIPT)
        self._clear_script = client.register_script(CLEAR_ENVELOPES_SCRIPT)
        self._direct = DirectCommands.for_client(client)
        #: The server answers ``SET ... GET`` (Redis 6.2 or later); learned on first use.
        self._swaps = True

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
        client, closers = connect_url(url, options)
        try:
            backend = cls(
                client, prefix=prefix, serializer=serializer, default_ttl=default_ttl, timer=timer
            )
        except BaseException:
            close_all(closers)
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
                except RETRY_THROUGH_CLIENT:
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
        prefix = self._prefix_bytes  # _key() inlined: this runs for every key of a batch
        full = [prefix + key.encode("utf-8", "surrogatepass") for key in keys]
        direct = self._direct
        if self._cluster:
            values = self._client.mget_nonatomic(full)
        elif direct is None:
            values = self._client.mget(full)
        else:
            try:
                values = direct.call(pack(b"MGET", *full))
            except RETRY_THROUGH_CLIENT:
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
            direct.call(pack_set(full, data, px))
        except RETRY_THROUGH_CLIENT:
            self._client.set(full, data, px=px)

    def _set_many(self, items: dict[str, Entry]) -> None:
        encoded = [(self._key(k), self.codec.encode(e), e.expires_at) for k, e in items.items()]
        direct = self._direct
        if direct is not None:
            # One write of every SET, then every reply: what a non-transactional pipeline
            # does, without building it.
            commands = b"".join(
                [pack_set(full, data, self._px(expires_at)) for full, data, expires_at in encoded]
            )
            try:
                direct.call(commands, replies=len(encoded))
                return
            except RETRY_THROUGH_CLIENT:
                pass
        with self._client.pipeline(transaction=False) as pipe:
            for full, data, expires_at in encoded:
                pipe.set(full, data, px=self._px(expires_at))
            pipe.execute()

    def swap_entries(self, items: t.Mapping[str, Entry]) -> dict[str, tuple[bytes, int | None]]:
        """Store ``items`` with one ``SET ... GET`` each (one round trip) and return, per key,
        its encoded entry and the version of the entry it replaced.

        The version is ``None`` when the key held nothing (or an expired entry), a value of
        another type or not an envelope, or when the server predates ``SET ... GET`` (Redis
        6.2); the entries are then stored with a plain ``SET``. A backplane announcement
        carries both, so that another process holding exactly the replaced entry replaces
        its copy instead of evicting it (see :mod:`tieredcache.tiered.coherence`). Items
        must be unexpired (the composition checks).

        :raises BackendError: the store failed.
        """
        encoded = [(self._key(k), self.codec.encode(e), e) for k, e in items.items()]
        replaced = self._call(self._swap, encoded)
        self._counters.slot()[_SETS_INDEX] += len(encoded)
        return {
            key: (data, _version_of(old))
            for key, (_, data, _), old in zip(items, encoded, replaced)
        }

    def _swap(self, encoded: list[tuple[bytes, bytes, Entry]]) -> list[t.Any]:
        if not self._swaps:
            _raise_first(self._send_sets(encoded, get=False))
            return [None] * len(encoded)
        replies = self._send_sets(encoded, get=True)
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, Exception)]
        if not refused:
            return replies
        errors = [str(replies[i]) for i in refused]
        if not all("WRONGTYPE" in e or "syntax" in e.lower() for e in errors):
            raise replies[refused[0]]  # OOM, READONLY ...: these writes did not land
        if any("syntax" in e.lower() for e in errors):
            self._swaps = False  # a server before Redis 6.2: SET has no GET
        # A key of another type, or no SET ... GET: only those are written again, with a
        # plain SET; nothing is known of what they replaced.
        _raise_first(self._send_sets([encoded[i] for i in refused], get=False))
        for i in refused:
            replies[i] = None
        return replies

    def _send_sets(self, encoded: list[tuple[bytes, bytes, Entry]], *, get: bool) -> list[t.Any]:
        """One ``SET`` (``get``: ``SET ... GET``) per item in one round trip; the replies,
        error replies in their place."""
        direct = self._direct
        if direct is not None:
            packed = b"".join(
                [pack_set(full, data, self._px(e.expires_at), get=get) for full, data, e in encoded]
            )
            try:
                replies = direct.call(packed, replies=len(encoded), errors_inline=True)
                if len(encoded) == 1:
                    return [replies]
                return list(replies)
            except redis.exceptions.ResponseError as exc:  # one key: raised, not listed
                return [exc]
            except RETRY_THROUGH_CLIENT:
                pass
        with self._client.pipeline(transaction=False) as pipe:
            for full, data, e in encoded:
                pipe.set(full, data, px=self._px(e.expires_at), get=get)
            return list(pipe.execute(raise_on_error=False))

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
                return int(direct.call(pack(b"UNLINK", *full)))
            except RETRY_THROUGH_CLIENT:
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
            "0" if expires_at is None else str(envelope.HAS_EXPIRES),
            struct.pack(envelope.TIME_FORMAT, 0.0 if expires_at is None else expires_at),
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

    def _match(self, pattern: str) -> bytes:
        """The ``SCAN MATCH`` pattern for a key pattern: within this backend's prefix."""
        if "[!" in pattern:  # Redis negates a set with "^" only
            pattern = re.sub(r"(?<!\\)\[!", "[^", pattern)
        return _glob_escape(self._prefix_bytes) + pattern.encode("utf-8", "surrogatepass")

    def _iter_keys(self, pattern: str) -> t.Iterator[str]:
        match = compile_glob(pattern).match
        skip = len(self._prefix_bytes)
        for batch in self._scan(self._match(pattern)):
            for raw in batch:
                key = raw[skip:].decode("utf-8", "surrogatepass")
                if match(key):  # the server matched bytes; check the text too
                    yield key

    def _invalidate_pattern(self, pattern: str) -> int:
        deleted = 0
        # Unlike clear(), the caller names what to delete: every matching key within the
        # prefix goes, whatever it holds (django-redis's hashes and sets too).
        for batch in self._scan(self._match(pattern)):
            deleted += int(self._client.unlink(*batch))
        return deleted

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
        close_all(self._closers)

    def _translate(self, exc: BaseException) -> BackendError:
        return translate(exc, self._target)

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


def _raise_first(replies: list[t.Any]) -> None:
    """Raise the first error reply of ``replies``, if any."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _version_of(data: t.Any) -> int | None:
    """The version in the envelope header of ``data``, or ``None`` if it is not one."""
    if not isinstance(data, bytes):
        return None
    try:
        return envelope.read_header(data)[2]
    except DeserializationError:
        return None


def _glob_escape(raw: bytes) -> bytes:
    """``raw`` with Redis glob metacharacters escaped, for ``SCAN MATCH``."""
    out = bytearray()
    for byte in raw:
        if byte in b"\\*?[]^-":
            out += b"\\"
        out.append(byte)
    return bytes(out)
