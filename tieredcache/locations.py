"""
Locations
=========

A *location* names the L2 store of a configured cache; :func:`parse_location` turns one
into a :class:`Location`. The forms Django, django-redis, Flask and the command line use:

==========================================================  ====================================
``None`` or ``""``                                          the embedded default L2: a SQLite
                                                            file at
                                                            :func:`~tieredcache.backends.sqlite.default_path`
``redis://``, ``rediss://``, ``unix://``,                   :meth:`RedisBackend.from_url
``redis+sentinel://``, ``redis+cluster://``                 <tieredcache.RedisBackend.from_url>`
``host:port:db``                                            ``redis://host:port/db``
a list of Redis URLs, or one string of them separated       the first is the primary; the
by ``,``                                                    others are read replicas
``memcached://host:port[,host:port...]``, ``host:port``,    :class:`~tieredcache.MemcachedBackend`
``"host:port;host:port"`` or a list of ``host:port``
``sqlite:///absolute/path``, ``sqlite://relative/path``     :class:`~tieredcache.SQLiteBackend`
``memory://`` (optionally ``memory://name``)                no L2: an in-process cache only
==========================================================  ====================================
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing as t

from tieredcache.errors import ConfigurationError

__all__ = ["SCHEMES", "Location", "parse_location", "redact"]

#: The location schemes :func:`parse_location` accepts.
SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "redis+cluster://",
    "memcached://",
    "sqlite://",
    "memory://",
)

_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
_STANDALONE = ("redis", "rediss", "unix")
_MEMCACHED_SCHEMES = ("memcached", "memcache")
# "host:port" or "[ipv6]:port"
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}\Z")
# django-redis's "host:port:db"
_HOST_PORT_DB = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5}):([0-9]{1,5})\Z")
# a URL whose port is followed by ":db" (redis://host:port:db), as django-redis reads it
_URL_PORT_DB = re.compile(r"\A(rediss?://[^/?#]*:[0-9]{1,5}):([0-9]{1,5})(\?[^#]*)?\Z", re.I)


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed location; hashable, so that equal locations share one cache.

    :ivar kind: ``"redis"``, ``"memcached"``, ``"sqlite"`` or ``"memory"``.
    :ivar target: the Redis URL (the primary), the memcached servers (a tuple), the SQLite
        path (``None``: the default file) or the memory cache's name.
    :ivar replicas: Redis URLs that reads may use (django-redis's replica list).
    """

    kind: str
    target: t.Any = None
    replicas: tuple[str, ...] = ()


def parse_location(location: t.Any) -> Location:
    """The :class:`Location` that ``location`` names (see the module documentation).

    :raises ConfigurationError: the location is not one of the accepted forms; the message
        says which forms are (without any password the location holds).
    """
    if isinstance(location, Location):
        return location
    if location is None or location == "":
        return Location("sqlite")
    if isinstance(location, (list, tuple)):
        return _parse_list(location)
    if not isinstance(location, str):
        raise ConfigurationError(
            f"the location must be a str (a URL) or a list of str, not {type(location).__name__}"
        )
    text = location.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        if _HOST_PORT_DB.match(text):
            return Location("redis", _redis_url(text))
        servers = tuple(s.strip() for s in re.split(r"[,;]", text) if s.strip())
        if servers and all(_HOST_PORT_DB.match(s) for s in servers):
            return _parse_list(list(servers))
        if servers and all(_HOST_PORT.match(s) or s.startswith("unix:/") for s in servers):
            return Location("memcached", servers)
        raise _unknown_location(location)
    if scheme in _STANDALONE and "," in text:
        # django-redis: "redis://primary,redis://replica"
        return _parse_list([part for part in text.split(",")])
    if scheme in _REDIS_SCHEMES:
        return Location("redis", _redis_url(text))
    if scheme in _MEMCACHED_SCHEMES:
        netloc, _, query = rest.partition("?")
        if query:
            raise ConfigurationError(
                f"memcached locations take no query string ({location!r}); "
                "give options in the options mapping instead"
            )
        if netloc.startswith("/"):  # memcached:///path/to/socket
            return Location("memcached", (netloc,))
        servers = tuple(s.strip() for s in re.split(r"[,;]", netloc.rstrip("/")) if s.strip())
        if not servers:
            raise ConfigurationError(f"the memcached location names no server: {location!r}")
        return Location("memcached", servers)
    if scheme == "sqlite":
        if not rest:
            return Location("sqlite")
        if rest == ":memory:":
            raise ConfigurationError(
                "sqlite://:memory: cannot be shared between threads and processes; "
                "use 'memory://' for an in-process cache"
            )
        return Location("sqlite", os.path.abspath(os.path.expanduser(rest)))
    if scheme == "memory":
        return Location("memory", rest)
    raise _unknown_location(location)


def _parse_list(location: t.Sequence[t.Any]) -> Location:
    items = [item for item in location if not (isinstance(item, str) and not item.strip())]
    if not items or not all(isinstance(item, str) for item in items):
        raise ConfigurationError(
            f"the location must be a URL or a list of URLs or memcached servers (str), "
            f"not {redact(location)!r}"
        )
    if len(items) == 1:
        return parse_location(items[0])
    parsed = [parse_location(item) for item in items]
    if all(p.kind == "memcached" for p in parsed):
        merged: list[str] = []
        for p in parsed:
            merged.extend(s for s in p.target if s not in merged)
        return Location("memcached", tuple(merged))
    if all(p.kind == "redis" and not p.replicas for p in parsed):
        urls = [p.target for p in parsed]
        if any(url.partition("://")[0].lower() not in _STANDALONE for url in urls):
            raise ConfigurationError(
                "a list of Redis URLs names a primary and its replicas (redis://, rediss:// "
                "or unix://); for a Redis Cluster use 'redis+cluster://host:port,host:port', "
                "for Sentinel 'redis+sentinel://host:port,host:port/service_name'"
            )
        replicas = tuple(dict.fromkeys(url for url in urls[1:] if url != urls[0]))
        return Location("redis", urls[0], replicas)
    raise ConfigurationError(
        "a list location must name Redis URLs only (the primary, then its replicas) or "
        f"memcached servers only, not {[redact(item) for item in items]!r}"
    )


def _redis_url(text: str) -> str:
    """A redis-py URL for django-redis's ``host:port:db`` and ``redis://host:port:db``."""
    bare = _HOST_PORT_DB.match(text)
    if bare:
        return f"redis://{bare.group(1)}:{bare.group(2)}/{bare.group(3)}"
    with_db = _URL_PORT_DB.match(text)
    if with_db:
        return f"{with_db.group(1)}/{with_db.group(2)}{with_db.group(3) or ''}"
    return text


def _unknown_location(location: object) -> ConfigurationError:
    return ConfigurationError(
        f"cannot use the cache location {redact(location)!r}: it must be empty (the embedded "
        f"SQLite default), a URL starting with one of {', '.join(SCHEMES)}, Redis as "
        f"'host:port:db', or memcached servers as 'host:port' (several separated by ',' or "
        f"';', or in a list)"
    )


def redact(location: object) -> object:
    """``location`` with any password replaced by ``***`` (for messages and logs)."""
    if isinstance(location, (list, tuple)):
        return [redact(item) for item in location]
    if not isinstance(location, str):
        return location
    parts = []
    for part in location.split(","):
        scheme, sep, rest = part.partition("://")
        userinfo, at, hosts = rest.rpartition("@")
        if sep and at:
            part = f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"
        parts.append(part)
    return ",".join(parts)
