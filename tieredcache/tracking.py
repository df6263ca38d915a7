"""
Server-assisted invalidation
============================

Redis (6.0 and later) can tell a client which keys changed, whoever changed them:
``CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX <prefix>`` makes the server send the name of
every key under ``<prefix>`` that is written, deleted, expired or evicted to the connection
``<id>``, and a null message when the database is flushed. In RESP2 the receiving connection
gets them as pub/sub messages on the channel ``__redis__:invalidate``, so a
:class:`~tieredcache.redis.backplane.RedisBackplane` created with ``tracking=True`` enables
tracking on its own subscriber connection (redirected to itself, before it subscribes, and
again after every reconnection) and subscribes to that channel beside its own. With a Redis
Cluster client it runs one such subscriber per primary instead
(:mod:`tieredcache.cluster_tracking`).

:class:`ServerTracking` holds the prefixes, enables tracking on a connection, and maps the
Redis key names of a message back to the cache's keys by stripping the prefix (the L2
backend's prefix, by default); names outside every prefix are ignored.

redis-py's own client-side cache (``cache_config``) is not used: it caches replies per
connection pool, while tieredcache's L1 is the composition's first layer.
"""

from __future__ import annotations

import typing as t

import redis.exceptions

from tieredcache.errors import ConfigurationError

__all__ = ["TRACKING_CHANNEL", "ServerTracking"]

TRACKING_CHANNEL = "__redis__:invalidate"
"""The channel on which a RESP2 connection receives tracking invalidations."""

_CHANNEL_BYTES = TRACKING_CHANNEL.encode("ascii")


class ServerTracking:
    """Broadcast-mode key tracking for one subscriber connection.

    :param prefixes: the Redis key-name prefixes to track; ``None`` until :meth:`bind` sets
        the L2 backend's prefix (a backplane that is never bound tracks every key). No prefix
        may start with another (Redis refuses overlapping prefixes).
    :raises ConfigurationError: ``prefixes`` is not a sequence of str, or two overlap.
    """

    def __init__(self, prefixes: t.Sequence[str] | None = None) -> None:
        self.prefixes: tuple[str, ...] | None = None
        if prefixes is not None:
            self.prefixes = _check_prefixes(prefixes)
        self._encoded: tuple[bytes, ...] = ()
        if self.prefixes is not None:
            self._encoded = tuple(_encode(p) for p in self.prefixes)

    def bind(self, prefix: str) -> None:
        """Track ``prefix`` (the L2 backend's) unless prefixes were given explicitly."""
        if self.prefixes is None:
            self.prefixes = _check_prefixes([prefix])
            self._encoded = (_encode(prefix),)

    def command(self, client_id: int) -> list[t.Any]:
        """The ``CLIENT TRACKING`` command redirecting to ``client_id``."""
        args: list[t.Any] = ["CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST"]
        for prefix in self._encoded or (b"",):
            if prefix:
                args += ["PREFIX", prefix]
        return args

    def enable(self, connection: t.Any) -> None:
        """Turn tracking on for ``connection``, redirected to itself (a connect callback:
        it runs on every (re)connection, before the subscriptions are renewed).

        :raises redis.exceptions.ResponseError: the server refused (Redis before 6.0).
        """
        connection.send_command("CLIENT", "ID")
        client_id = int(connection.read_response())
        connection.send_command(*self.command(client_id))
        reply = connection.read_response()
        if reply not in (b"OK", "OK"):
            raise redis.exceptions.ConnectionError(f"CLIENT TRACKING answered {reply!r}")

    @staticmethod
    def is_invalidation(channel: t.Any) -> bool:
        """True if a pub/sub message on ``channel`` is a tracking invalidation."""
        return bool(channel in (_CHANNEL_BYTES, TRACKING_CHANNEL))

    def keys(self, data: t.Any) -> list[str] | None:
        """The cache keys named by an invalidation; ``None`` for a flush (a null message).

        Names outside every prefix, and names that are not valid keys, are left out.
        """
        if data is None:
            return None
        if isinstance(data, (bytes, str)):
            data = [data]
        keys: list[str] = []
        encoded = self._encoded or (b"",)
        for name in data:
            if isinstance(name, str):
                name = name.encode("utf-8", "surrogatepass")
            if not isinstance(name, bytes):
                continue
            for prefix in encoded:
                if name.startswith(prefix):
                    try:
                        keys.append(name[len(prefix) :].decode("utf-8", "surrogatepass"))
                    except UnicodeDecodeError:
                        pass
                    break
        return keys

    def __repr__(self) -> str:
        return f"ServerTracking(prefixes={self.prefixes!r})"


def _encode(prefix: str) -> bytes:
    return prefix.encode("utf-8", "surrogatepass")


def _check_prefixes(prefixes: t.Sequence[str]) -> tuple[str, ...]:
    if isinstance(prefixes, (str, bytes)) or not all(isinstance(p, str) for p in prefixes):
        raise ConfigurationError("tracking_prefixes must be a sequence of str")
    chosen = tuple(dict.fromkeys(prefixes))
    if not chosen:
        raise ConfigurationError("tracking_prefixes must name at least one prefix")
    for a in chosen:
        for b in chosen:
            if a is not b and b.startswith(a):
                raise ConfigurationError(
                    f"tracking prefixes {a!r} and {b!r} overlap; Redis refuses that"
                )
    return chosen
