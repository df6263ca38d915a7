"""
Memcached
=========

:class:`MemcachedBackend` stores entries on one or more memcached servers through
``pymemcache``: a pooled client for one server, a consistent-hashing client for several.

Every value is stored as an :class:`~tieredcache.serializers.EntryCodec` envelope, so a hit
knows its exact expiry, version and stale time. The server expires the item too, at most two
seconds after its entry (whole seconds, rounded up, plus one; never "0", which is "never").

Keys that memcached forbids (longer than 250 bytes, with whitespace or control characters,
non-ASCII, or empty) are hashed instead of refused: they are stored under
``"tc:h:" + sha256(prefix + key)``. A legal key that happens to start with ``"tc:h:"`` is
hashed too, so two keys never share a server key. :meth:`MemcachedBackend.clear` empties
the whole server (or servers), as Django's memcached backends do.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import time
import typing as t
import urllib.parse

from tieredcache.backends.base import Backend
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import UnsupportedOperationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer

try:
    from pymemcache.client.base import PooledClient
    from pymemcache.client.hash import HashClient
    from pymemcache.exceptions import MemcacheServerError
except ImportError as exc:  # pragma: no cover - pymemcache is a dependency of tieredcache
    raise ConfigurationError(
        "MemcachedBackend needs the pymemcache package: pip install pymemcache"
    ) from exc

from tieredcache.backends.memcached_errors import DRIVER_ERRORS
from tieredcache.backends.memcached_errors import DROPPED
from tieredcache.backends.memcached_errors import POOL_EXHAUSTED
from tieredcache.backends.memcached_errors import failed_server
from tieredcache.backends.memcached_errors import is_too_large
from tieredcache.backends.memcached_errors import tag_server
from tieredcache.backends.memcached_errors import translate
from tieredcache.backends.memcached_servers import Server
from tieredcache.backends.memcached_servers import ServersSpec
from tieredcache.backends.memcached_servers import flush_server
from tieredcache.backends.memcached_servers import format_server
from tieredcache.backends.memcached_servers import parse_servers
from tieredcache.backends.memcached_servers import pooled_clients
from tieredcache.backends.memcached_servers import servers_of

__all__ = ["MemcachedBackend"]

T = t.TypeVar("T")

#: Prefix of the server key of a key memcached would refuse.
_HASHED = "tc:h:"
#: What memcached accepts as a key: 1 to 250 printable ASCII characters, no space.
_LEGAL_KEY = re.compile(r"[\x21-\x7e]{1,250}")
#: Expiry values above this many seconds (30 days) are unix times to memcached.
_RELATIVE_LIMIT = 30 * 86400
#: How many dropped connections a call replaces when the pool has no size bound.
_MOST_DROPPED = 64
#: memcached parses the expiry as a signed 32-bit integer.
_MAX_EXPTIME = 2**31 - 1
#: Bytes an item takes on the server beyond its key and value (item header, CAS, CRLF);
#: measured as 59 on memcached 1.6, rounded up.
_ITEM_OVERHEAD = 64


class _StrictHashClient(HashClient):
    """A :class:`~pymemcache.client.hash.HashClient` that raises every failure.

    HashClient answers a call to a server that failed recently with a default (``None``
    for a get, ``False`` for a set) instead of an error, and after a few failures drops the
    server from the ring, so that its keys move to another server and come back, possibly
    stale, when it returns. A backend must raise instead, and a key must always live on the
    same server, so every call goes straight to the key's server. With no failure
    bookkeeping left, the client has no mutable state and is thread-safe.

    An error is tagged with the server that raised it, so that the message names that
    server rather than the whole list.
    """

    def _safely_run_func(
        self,
        client: t.Any,
        func: t.Callable[..., t.Any],
        default_val: t.Any,
        *args: t.Any,
        **kwargs: t.Any,
    ) -> t.Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            tag_server(exc, client.server)
            raise

    def _safely_run_set_many(
        self, client: t.Any, values: dict[t.Any, t.Any], *args: t.Any, **kwargs: t.Any
    ) -> t.Any:
        try:
            return client.set_many(values, *args, **kwargs)
        except Exception as exc:
            tag_server(exc, client.server)
            raise


class MemcachedBackend(Backend):
    """A memcached store, on one server or consistently hashed over several.

    Thread-safe: connections come from a pool, one per concurrent call; after a fork the
    child builds a pool of its own.

    Values are encoded before any network call, so a value that cannot be serialized raises
    :class:`~tieredcache.errors.SerializationError` and writes nothing. A value larger than
    ``max_value_size`` raises :class:`~tieredcache.errors.ValueTooLargeError` (a
    :class:`~tieredcache.errors.BackendResponseError`) before it is sent, so the key keeps its
    older value (memcached itself drops the old item when it refuses a set as too large).

    ``clear()`` cannot remove only this backend's keys, because memcached cannot delete by
    prefix: it runs ``flush_all`` and empties the whole memcached server(s), as Django's
    memcached backends do. Give each cache its own server if that matters.

    :param servers: ``"host:port"``, ``(host, port)``, a unix socket path, a list of those,
        or a string listing several separated by ``,`` or ``;`` (as Django's ``LOCATION``).
        Optional when ``client`` is given.
    :param prefix: prepended to every key (a namespace, not an isolation: see ``clear``).
    :param serializer: the payload serializer (pickle by default).
    :param default_ttl: the TTL in seconds used when a call passes none (``None`` = forever).
    :param timer: the clock, in epoch seconds; the envelope's expiry follows it.
    :param connect_timeout: seconds to wait for a connection.
    :param timeout: seconds to wait for each send and receive.
    :param max_pool_size: the most connections per server; a call that finds them all in
        use raises :class:`~tieredcache.errors.BackendUnavailableError` (``None``: no bound).
    :param max_value_size: the largest item in bytes, counting the envelope, the key and
        memcached's item header; match the server's ``-I`` (1 MiB by default).
    :param client: a ready ``pymemcache`` client (``Client``, ``PooledClient`` or
        ``HashClient``, without a serde) to use instead of building one. The caller owns it:
        :meth:`close` leaves it open, and after a fork the caller must replace it.
    """

    name = "memcached"
    _driver_errors = DRIVER_ERRORS

    def __init__(
        self,
        servers: ServersSpec | None = None,
        *,
        prefix: str = "",
        serializer: Serializer | None = None,
        default_ttl: float | None = None,
        timer: Timer | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        max_pool_size: int | None = None,
        max_value_size: int = 1024 * 1024,
        client: t.Any = None,
    ) -> None:
        super().__init__(default_ttl=default_ttl, timer=timer)
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
        for option, seconds in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
                raise ConfigurationError(f"{option} must be a positive number, not {seconds!r}")
        if max_pool_size is not None and not _is_int_above(max_pool_size, 0):
            raise ConfigurationError(
                f"max_pool_size must be a positive int or None, not {max_pool_size!r}"
            )
        if not _is_int_above(max_value_size, _ITEM_OVERHEAD):
            raise ConfigurationError(
                f"max_value_size must be an int above {_ITEM_OVERHEAD}, not {max_value_size!r}"
            )
        if servers is None and client is None:
            raise ConfigurationError("MemcachedBackend needs servers or a client")
        self.servers: list[Server] = (
            parse_servers(servers) if servers is not None else servers_of(client)
        )
        self.prefix = prefix
        self.connect_timeout = float(connect_timeout)
        self.timeout = float(timeout)
        self.max_pool_size = max_pool_size
        self.max_value_size = max_value_size
        self._codec = EntryCodec(serializer)
        self.serializer = self._codec.serializer
        self._lock = threading.Lock()
        self._owns_client = client is None
        self._client = client if client is not None else self._build_client()
        self._pid = os.getpid()

    @classmethod
    def from_url(cls, url: str, **options: t.Any) -> MemcachedBackend:
        """A backend for ``memcached://host:port[,host:port...][?option=value...]``.

        ``memcached:///path/to/socket`` names a unix socket. The query may set ``prefix``,
        ``connect_timeout``, ``timeout``, ``max_pool_size``, ``max_value_size`` and
        ``default_ttl``; keyword ``options`` override it.

        :raises ConfigurationError: the URL is not a memcached URL or has an unknown option.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("memcached", "memcache"):
            raise ConfigurationError(f"not a memcached:// URL: {url!r}")
        if "@" in parts.netloc:
            raise ConfigurationError("memcached URLs carry no credentials")
        servers = parts.netloc or parts.path
        if not servers:
            raise ConfigurationError(f"the URL names no server: {url!r}")
        parsed: dict[str, t.Any] = {}
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            convert = _URL_OPTIONS.get(name)
            if convert is None:
                raise ConfigurationError(
                    f"unknown option {name!r} in a memcached URL; known: {sorted(_URL_OPTIONS)}"
                )
            try:
                parsed[name] = convert(value)
            except ValueError as exc:
                raise ConfigurationError(f"bad value for {name!r}: {value!r}") from exc
        parsed.update(options)
        return cls(servers, **parsed)

    # -- the client -------------------------------------------------------------------

    def _build_client(self) -> t.Any:
        common: dict[str, t.Any] = {
            "connect_timeout": self.connect_timeout,
            "timeout": self.timeout,
            "no_delay": True,
            "max_pool_size": self.max_pool_size,
            "default_noreply": False,
        }
        if len(self.servers) == 1:
            return PooledClient(self.servers[0], **common)
        return _StrictHashClient(self.servers, use_pooling=True, **common)

    @property
    def client(self) -> t.Any:
        """The ``pymemcache`` client in use (rebuilt in a forked child when owned)."""
        if self._pid != os.getpid() and self._owns_client:
            self._after_fork()
        return self._client

    def _after_fork(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            inherited = self._client
            # The parent's sockets must not be shared: close this process's copies of them
            # (the parent's connections stay open), without the pool's lock, which another
            # thread of the parent may have held at the fork.
            for pooled in pooled_clients(inherited):
                pool = getattr(pooled, "client_pool", None)
                conns = (*pool.free, *pool.used) if pool is not None else (pooled,)
                for conn in conns:
                    try:
                        conn.close()
                    except Exception:  # pragma: no cover - best effort on a stale socket
                        pass
            self._client = self._build_client()
            self._pid = os.getpid()

    def server_key(self, key: str) -> str:
        """The key stored on the server for ``key``: ``prefix + key``, hashed when illegal."""
        full = self.prefix + key
        if _LEGAL_KEY.fullmatch(full) is not None and not full.startswith(_HASHED):
            return full
        return _HASHED + hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()

    # -- encoding and expiry ------------------------------------------------------------

    def _encode(self, key: str, skey: str, entry: Entry) -> bytes:
        """The envelope of ``entry``, refused when the item would exceed ``max_value_size``."""
        data = self._codec.encode(entry)
        self._check_size(key, skey, len(data))
        return data

    def admit(self, items: t.Mapping[str, Entry]) -> None:
        """Refuse a value larger than ``max_value_size`` (its envelope is made once)."""
        for key, entry in items.items():
            self._encode(key, self.server_key(key), entry)

    def _check_size(self, key: str, skey: str, size: int) -> None:
        item = size + len(skey) + _ITEM_OVERHEAD
        if item > self.max_value_size:
            raise ValueTooLargeError(
                f"the value for {_shorten(key)} is {item} bytes as a memcached item "
                f"({size} of envelope, {len(skey)} of key, {_ITEM_OVERHEAD} of item header) "
                f"and the limit is {self.max_value_size} bytes (max_value_size); "
                f"nothing was written",
                backend=self.name,
            )

    def _expire(self, expires_at: float | None, now: float) -> int:
        """The server-side expiry of an entry: whole seconds, rounded up, never 0, and a
        relative one a second longer (memcached counts it from its clock's last tick, which
        can be almost a second old); the envelope keeps the exact expiry."""
        if expires_at is None:
            return 0
        seconds = max(1, math.ceil(min(expires_at - now, float(_MAX_EXPTIME))))
        if seconds < _RELATIVE_LIMIT:
            return seconds + 1
        # memcached reads longer expiries as unix times, on the server's clock, which the
        # wall clock approximates better than an injected timer.
        return min(math.ceil(time.time()) + seconds, _MAX_EXPTIME)

    def _too_large(self, what: str, size: int) -> BackendError:
        return ValueTooLargeError(
            f"the server refused {what} ({size} bytes of envelope) as too large for its "
            f"item size limit; lower max_value_size "
            f"({self.max_value_size}) to the server's -I setting",
            backend=self.name,
        )

    # -- hooks --------------------------------------------------------------------------

    def _get(self, key: str) -> Entry | None:
        data = self.client.get(self.server_key(key))
        if data is None:
            return None
        return self._decode(self._codec, key, data)

    def _get_many(self, keys: list[str]) -> dict[str, Entry]:
        by_server_key = {self.server_key(key): key for key in keys}
        found = self.client.get_many(list(by_server_key))
        entries = {}
        for skey, data in found.items():
            key = by_server_key[skey]
            entry = self._decode(self._codec, key, data)
            if entry is not None:
                entries[key] = entry
        return entries

    def _set(self, key: str, entry: Entry) -> None:
        skey = self.server_key(key)
        data = self._encode(key, skey, entry)
        expire = self._expire(entry.expires_at, self.timer())
        try:
            stored = self.client.set(skey, data, expire=expire, noreply=False)
        except MemcacheServerError as exc:
            if is_too_large(exc):
                raise self._too_large(f"the value for {_shorten(key)}", len(data)) from exc
            raise
        if not stored:
            raise BackendResponseError(
                f"memcached did not store {_shorten(key)}", backend=self.name
            )

    def _set_many(self, items: dict[str, Entry]) -> None:
        now = self.timer()
        # Encode everything first: an unserializable or oversized value writes nothing.
        batches: dict[int, dict[str, bytes]] = {}
        keys_of: dict[str, str] = {}
        for key, entry in items.items():
            skey = self.server_key(key)
            keys_of[skey] = key
            data = self._encode(key, skey, entry)
            batches.setdefault(self._expire(entry.expires_at, now), {})[skey] = data
        client = self.client
        failed: list[str] = []
        for expire, values in batches.items():
            try:
                failed += client.set_many(values, expire=expire, noreply=False)
            except MemcacheServerError as exc:
                if is_too_large(exc):
                    size = max(len(data) for data in values.values())
                    raise self._too_large("a value of the batch", size) from exc
                raise
        if failed:
            names = ", ".join(_shorten(keys_of.get(skey, skey)) for skey in failed[:5])
            raise BackendResponseError(
                f"memcached did not store {len(failed)} of {len(items)} keys: {names}",
                backend=self.name,
            )

    def _add(self, key: str, entry: Entry) -> bool:
        skey = self.server_key(key)
        data = self._encode(key, skey, entry)
        client = self.client
        while True:
            expire = self._expire(entry.expires_at, self.timer())
            try:
                if client.add(skey, data, expire=expire, noreply=False):
                    return True
            except MemcacheServerError as exc:
                if is_too_large(exc):
                    raise self._too_large(f"the value for {_shorten(key)}", len(data)) from exc
                raise
            # The server keeps an item up to a second past its envelope, and the timer may be
            # ahead of the server's clock: an item the envelope calls expired is replaced.
            current, cas = client.gets(skey)
            if current is None:
                continue  # it expired or was deleted since: add again
            held = self._decode(self._codec, key, current)
            if held is not None and not held.expired(self.timer()):
                return False
            if client.cas(skey, data, cas, expire=expire, noreply=False):
                return True
            # Another writer changed or removed the key since ``gets``: look again.

    def _delete(self, key: str) -> bool:
        return bool(self.client.delete(self.server_key(key), noreply=False))

    def _delete_many(self, keys: list[str]) -> int:
        client = self.client
        return sum(1 for key in keys if client.delete(self.server_key(key), noreply=False))

    def _incr(self, key: str, delta: int) -> int:
        skey = self.server_key(key)
        client = self.client
        while True:
            data, cas = client.gets(skey)
            if data is None:
                raise KeyError(key)
            current = self._decode(self._codec, key, data)
            now = self.timer()
            if current is None or current.expired(now):
                raise KeyError(key)
            value = current.value
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"the value under {key!r} is not an integer")
            result = value + delta
            updated = Entry(result, current.expires_at, next_version(), current.stale_at)
            new_data = self._encode(key, skey, updated)
            expire = self._expire(current.expires_at, now)
            if client.cas(skey, new_data, cas, expire=expire, noreply=False):
                return result
            # A conflict (another writer) or the key vanished: read it again.

    def _touch(self, key: str, expires_at: float | None) -> bool:
        skey = self.server_key(key)
        client = self.client
        while True:
            data, cas = client.gets(skey)
            if data is None:
                return False
            current = self._decode(self._codec, key, data)
            now = self.timer()
            if current is None or current.expired(now):
                return False
            # Verified above; a signed payload is signed again under its new header.
            new_data = self._codec.retime(data, expires_at)
            stored = client.cas(
                skey, new_data, cas, expire=self._expire(expires_at, now), noreply=False
            )
            if stored:
                return True
            if stored is None:
                return False  # deleted since ``gets``

    def _clear(self) -> None:
        """Empty every server: memcached cannot delete by prefix."""
        for server in pooled_clients(self.client):
            flush_server(server)

    def _iter_keys(self, pattern: str) -> t.Iterator[str]:
        raise UnsupportedOperationError(
            "memcached cannot list or match its keys, so iter_keys and invalidate_pattern "
            "are not available; tag the entries and invalidate the tags instead"
        )

    def clear(self) -> None:
        """Remove every entry: this empties the whole memcached server(s), as Django's
        memcached backends do, including keys of other prefixes and other applications."""
        super().clear()

    def _close(self) -> None:
        if self._owns_client:
            # The pool reconnects on the next call, so close() does not end the backend.
            self.client.close()

    def _call(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        # A connection the server dropped (a restart) fails at once: the call is made again
        # on another, as many times as the pool may hold such idle connections.
        for _ in range(self.max_pool_size or _MOST_DROPPED):
            try:
                return self._call_once(fn, *args)
            except BackendUnavailableError as exc:
                if not isinstance(exc.__cause__, DROPPED):
                    raise
        return self._call_once(fn, *args)

    def _call_once(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        try:
            return super()._call(fn, *args)
        except RuntimeError as exc:
            # pymemcache's pool raises a bare RuntimeError when every connection is in use;
            # anything else is not a driver error and passes through.
            if not str(exc).startswith(POOL_EXHAUSTED):
                raise
            raise BackendUnavailableError(
                f"every connection of the pool is in use (max_pool_size={self.max_pool_size})",
                backend=self.name,
            ) from exc

    def _translate(self, exc: BaseException) -> BackendError:
        return translate(exc, self._where(exc), self.name)

    def _where(self, exc: BaseException) -> str:
        server = failed_server(exc)
        if server is not None:
            return format_server(server)
        return ", ".join(format_server(s) for s in self.servers) or "memcached"

    @property
    def call_timeout(self) -> float | None:
        """The longest one call waits: the connect and the reply timeouts."""
        return self.timeout + self.connect_timeout

    def _stats_extra(self) -> dict[str, t.Any]:
        return {
            "servers": [format_server(s) for s in self.servers],
            "prefix": self.prefix,
            "max_value_size": self.max_value_size,
        }

    def __repr__(self) -> str:
        servers = [format_server(s) for s in self.servers]
        return f"<MemcachedBackend servers={servers!r} prefix={self.prefix!r}>"


# -- helpers ------------------------------------------------------------------------------


def _is_int_above(value: t.Any, floor: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > floor


def _shorten(key: str, limit: int = 60) -> str:
    return repr(key) if len(key) <= limit else repr(key[:limit]) + f"... ({len(key)} chars)"


def _int_or_none(value: str) -> int | None:
    return None if value.lower() in ("", "none") else int(value)


def _float_or_none(value: str) -> float | None:
    return None if value.lower() in ("", "none") else float(value)


_URL_OPTIONS: dict[str, t.Callable[[str], t.Any]] = {
    "prefix": str,
    "connect_timeout": float,
    "timeout": float,
    "max_pool_size": _int_or_none,
    "max_value_size": int,
    "default_ttl": _float_or_none,
}
