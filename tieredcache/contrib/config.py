"""
Configuration from settings
===========================

Web frameworks describe a cache as a *location* (a URL, or memcached servers) and a mapping
of *options*. :func:`build_cache` turns them into a :class:`~tieredcache.TieredCache`: an
in-process L1 in front of the L2 that the location names. :func:`shared_cache` keeps one
such cache per configuration per process, so that every framework object configured alike
(Django makes a backend instance per thread and alias) shares one L1, one connection pool
and one offload. Both the Django and the Flask integrations use this module.

Locations:

==========================================================  ====================================
``None`` or ``""``                                          the embedded default L2: a SQLite
                                                            file at
                                                            :func:`~tieredcache.backends.sqlite.default_path`
``redis://``, ``rediss://``, ``unix://``,                   :meth:`RedisBackend.from_url
``redis+sentinel://``, ``redis+cluster://``                 <tieredcache.RedisBackend.from_url>`
``memcached://host:port[,host:port...]``, ``host:port``,    :class:`~tieredcache.MemcachedBackend`
``"host:port;host:port"`` or a list of ``host:port``
``sqlite:///absolute/path``, ``sqlite://relative/path``     :class:`~tieredcache.SQLiteBackend`
``memory://`` (optionally ``memory://name``)                no L2: an in-process cache only
==========================================================  ====================================

Options (keys are case-insensitive, so Django's upper-case ``OPTIONS`` work): see
:data:`OPTIONS` and ``docs/integrations/django.rst``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import importlib
import logging
import os
import re
import threading
import typing as t

from tieredcache import lifecycle
from tieredcache.backends.base import Backend
from tieredcache.backends.memory import MemoryBackend
from tieredcache.backends.null import NullBackend
from tieredcache.breaker import CircuitBreaker
from tieredcache.errors import ConfigurationError
from tieredcache.policies.read import ParallelRead
from tieredcache.policies.read import RaceRead
from tieredcache.policies.read import ReadPolicy
from tieredcache.policies.read import SequentialRead
from tieredcache.policies.refill import Refill
from tieredcache.policies.write import LoserPolicy
from tieredcache.policies.write import OptimisticParallelWrite
from tieredcache.policies.write import RaceWrite
from tieredcache.policies.write import SequentialWrite
from tieredcache.policies.write import WritePolicy
from tieredcache.serializers import CompressedSerializer
from tieredcache.serializers import JSONSerializer
from tieredcache.serializers import PickleSerializer
from tieredcache.serializers import Serializer
from tieredcache.serializers import SignedSerializer
from tieredcache.tiered import TieredCache

if t.TYPE_CHECKING:
    from tieredcache.offload import ThreadPoolOffload

__all__ = [
    "OPTIONS",
    "SCHEMES",
    "SIGNING_SALT",
    "build_cache",
    "release_shared_caches",
    "shared_cache",
]

logger = logging.getLogger("tieredcache")

#: Every option and its default. ``sign=None`` means "sign when a secret key is given".
OPTIONS: t.Mapping[str, t.Any] = {
    "l1_maxsize": 10_000,
    "l1_max_bytes": None,
    "l1_ttl": None,
    "l1_policy": "lru",
    "read": "sequential",
    "write": "sequential",
    "refill": "always",
    "serializer": "pickle",
    "sign": None,
    "compress_threshold": None,
    "offload_workers": None,
    "socket_timeout": None,
    "connect_timeout": None,
    "l2_prefix": "",
    "max_entries": None,
    "fail_open": False,
    "breaker_failures": 5,
    "breaker_reset_after": 5.0,
    "backplane": False,
    "backplane_channel": "tieredcache:invalidate",
    "jitter": 0.0,
}

#: The location schemes :func:`build_cache` accepts.
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

#: The salt of the HMAC that derives the signing key from a secret, so that a framework's
#: secret key is never itself the key that signs cache payloads.
SIGNING_SALT = b"tieredcache.contrib"

_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
_MEMCACHED_SCHEMES = ("memcached", "memcache")
_READ: dict[str, t.Callable[[], ReadPolicy]] = {
    "sequential": SequentialRead,
    "race": RaceRead,
    "parallel": ParallelRead,
}
_WRITE: dict[str, t.Callable[[], WritePolicy]] = {
    "sequential": SequentialWrite,
    "parallel": OptimisticParallelWrite,
    "race": lambda: RaceWrite(LoserPolicy.OFFLOAD),
    "race-drop": lambda: RaceWrite(LoserPolicy.DROP),
}
_REFILL = {"always": Refill.ALWAYS, "never": Refill.NEVER}
_L1_POLICIES = ("lru", "lfu", "fifo")
_SERIALIZERS: dict[str, t.Callable[[], Serializer]] = {
    "pickle": PickleSerializer,
    "json": JSONSerializer,
}
# "host:port" or "[ipv6]:port"
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}\Z")


# -- locations ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Location:
    """A parsed location; hashable, so that equal locations share one cache."""

    kind: str  # "redis", "memcached", "sqlite", "memory"
    target: t.Any = None  # the URL, the servers, the path (None = default), the name


def _parse_location(location: t.Any) -> _Location:
    if location is None or location == "":
        return _Location("sqlite")
    if isinstance(location, (list, tuple)):
        items = [item for item in location if not (isinstance(item, str) and not item.strip())]
        if not items or not all(isinstance(item, str) for item in items):
            raise ConfigurationError(
                f"the location must be a URL or a list of memcached servers (str), not {location!r}"
            )
        if len(items) == 1:
            return _parse_location(items[0])
        parsed = [_parse_location(item) for item in items]
        if all(p.kind == "memcached" for p in parsed):
            merged: list[str] = []
            for p in parsed:
                merged.extend(s for s in p.target if s not in merged)
            return _Location("memcached", tuple(merged))
        if any(p.kind == "redis" for p in parsed):
            raise ConfigurationError(
                "give one Redis URL as the location, not a list; for a Redis Cluster use "
                "'redis+cluster://host:port,host:port', for Sentinel "
                "'redis+sentinel://host:port,host:port/service_name'"
            )
        raise ConfigurationError(
            f"a list location must name memcached servers only, not {list(location)!r}"
        )
    if not isinstance(location, str):
        raise ConfigurationError(
            f"the location must be a str (a URL) or a list of str, not {type(location).__name__}"
        )
    text = location.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        servers = tuple(s.strip() for s in re.split(r"[,;]", text) if s.strip())
        if servers and all(_HOST_PORT.match(s) or s.startswith("unix:/") for s in servers):
            return _Location("memcached", servers)
        raise _unknown_location(location)
    if scheme in _REDIS_SCHEMES:
        return _Location("redis", text)
    if scheme in _MEMCACHED_SCHEMES:
        netloc, _, query = rest.partition("?")
        if query:
            raise ConfigurationError(
                f"memcached locations take no query string ({location!r}); "
                "give options in the options mapping instead"
            )
        if netloc.startswith("/"):  # memcached:///path/to/socket
            return _Location("memcached", (netloc,))
        servers = tuple(s.strip() for s in re.split(r"[,;]", netloc.rstrip("/")) if s.strip())
        if not servers:
            raise ConfigurationError(f"the memcached location names no server: {location!r}")
        return _Location("memcached", servers)
    if scheme == "sqlite":
        if not rest:
            return _Location("sqlite")
        if rest == ":memory:":
            raise ConfigurationError(
                "sqlite://:memory: cannot be shared between threads and processes; "
                "use 'memory://' for an in-process cache"
            )
        return _Location("sqlite", os.path.abspath(os.path.expanduser(rest)))
    if scheme == "memory":
        return _Location("memory", rest)
    raise _unknown_location(location)


def _unknown_location(location: object) -> ConfigurationError:
    return ConfigurationError(
        f"cannot use the cache location {_redact(location)!r}: it must be empty (the embedded "
        f"SQLite default), a URL starting with one of {', '.join(SCHEMES)}, or memcached "
        f"servers as 'host:port' (several separated by ',' or ';', or in a list)"
    )


def _redact(location: object) -> object:
    if not isinstance(location, str):
        return location
    scheme, sep, rest = location.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at:
        return location
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


# -- options --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Validated options; hashable, so that equal options share one cache."""

    l1_maxsize: int
    l1_max_bytes: int | None
    l1_ttl: float | None
    l1_policy: str
    read: t.Any  # a policy name, or a ReadPolicy
    write: t.Any  # a policy name, or a WritePolicy
    refill: t.Any  # a name, or a Refill
    serializer: t.Any  # a name or dotted path, or a Serializer
    sign: bool | None
    compress_threshold: int | None
    offload_workers: int | None
    socket_timeout: float | None
    connect_timeout: float | None
    l2_prefix: str
    fail_open: bool = False
    breaker_failures: int | None = 5
    breaker_reset_after: float = 5.0
    backplane: t.Any = False  # False, True (the Redis location) or a Redis URL
    backplane_channel: str = "tieredcache:invalidate"
    jitter: float = 0.0


def _parse_options(options: t.Any) -> _Settings:
    if options is None:
        options = {}
    if not isinstance(options, t.Mapping):
        raise ConfigurationError(
            f"the cache options must be a mapping (a dict), not {type(options).__name__}"
        )
    given: dict[str, t.Any] = {}
    for name, value in options.items():
        if not isinstance(name, str):
            raise ConfigurationError(f"option names must be str, not {name!r}")
        key = name.lower()
        if key not in OPTIONS:
            raise ConfigurationError(
                f"unknown cache option {name!r}; the valid options are "
                + ", ".join(n.upper() if name.isupper() else n for n in OPTIONS)
            )
        if key in given:
            raise ConfigurationError(f"the option {key!r} is given twice (names ignore case)")
        given[key] = value

    def get(name: str) -> t.Any:
        return given.get(name, OPTIONS[name])

    maxsize = get("l1_maxsize")
    if "max_entries" in given:
        if "l1_maxsize" in given and given["l1_maxsize"] != given["max_entries"]:
            raise ConfigurationError(
                "max_entries and l1_maxsize are the same option (the size of L1); give one"
            )
        maxsize = given["max_entries"]
        _check_int(maxsize, "max_entries", minimum=1)
    _check_int(maxsize, "l1_maxsize", minimum=1)
    max_bytes = get("l1_max_bytes")
    if max_bytes is not None:
        _check_int(max_bytes, "l1_max_bytes", minimum=1)
    l1_ttl = _check_seconds(get("l1_ttl"), "l1_ttl")
    policy = get("l1_policy")
    if not isinstance(policy, str) or policy.lower() not in _L1_POLICIES:
        raise ConfigurationError(
            f"l1_policy must be one of {', '.join(map(repr, _L1_POLICIES))}, not {policy!r}"
        )
    threshold = get("compress_threshold")
    if threshold is not None:
        _check_int(threshold, "compress_threshold", minimum=0)
    workers = get("offload_workers")
    if workers is not None:
        _check_int(workers, "offload_workers", minimum=1)
    sign = get("sign")
    if sign is not None and not isinstance(sign, bool):
        raise ConfigurationError(f"sign must be True or False, not {sign!r}")
    prefix = get("l2_prefix")
    if not isinstance(prefix, str):
        raise ConfigurationError(f"l2_prefix must be a str, not {prefix!r}")
    fail_open = get("fail_open")
    if not isinstance(fail_open, bool):
        raise ConfigurationError(f"fail_open must be True or False, not {fail_open!r}")
    failures = get("breaker_failures")
    if failures is not None:
        _check_int(failures, "breaker_failures (None turns the breaker off)", minimum=1)
    reset_after = _check_seconds(get("breaker_reset_after"), "breaker_reset_after")
    backplane = get("backplane")
    if not isinstance(backplane, (bool, str)):
        raise ConfigurationError(
            f"backplane must be True (use the Redis location), False, or a Redis URL, not "
            f"{backplane!r}"
        )
    channel = get("backplane_channel")
    if not isinstance(channel, str) or not channel:
        raise ConfigurationError(f"backplane_channel must be a non-empty str, not {channel!r}")
    jitter = get("jitter")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
        raise ConfigurationError(f"jitter must be a fraction in [0, 1), not {jitter!r}")
    return _Settings(
        l1_maxsize=maxsize,
        l1_max_bytes=max_bytes,
        l1_ttl=l1_ttl,
        l1_policy=policy.lower(),
        read=_choice(get("read"), "read", _READ, ReadPolicy),
        write=_choice(get("write"), "write", _WRITE, WritePolicy),
        refill=_choice(get("refill"), "refill", _REFILL, Refill),
        serializer=_check_serializer(get("serializer")),
        sign=sign,
        compress_threshold=threshold,
        offload_workers=workers,
        socket_timeout=_check_seconds(get("socket_timeout"), "socket_timeout"),
        connect_timeout=_check_seconds(get("connect_timeout"), "connect_timeout"),
        l2_prefix=prefix,
        fail_open=fail_open,
        breaker_failures=failures,
        breaker_reset_after=reset_after if reset_after is not None else 5.0,
        backplane=backplane,
        backplane_channel=channel,
        jitter=float(jitter),
    )


def _check_int(value: t.Any, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, not {value!r}")


def _check_seconds(value: t.Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e12:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds or None, not {value!r}"
        )
    return float(value)


def _choice(value: t.Any, name: str, names: t.Mapping[str, t.Any], cls: type) -> t.Any:
    """A policy name (returned lower-cased, built later) or a ready policy object."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str) and value.lower() in names:
        return value.lower()
    raise ConfigurationError(
        f"{name} must be one of {', '.join(map(repr, names))} (or a {cls.__name__}), not {value!r}"
    )


def _check_serializer(value: t.Any) -> t.Any:
    """A serializer name or dotted path (returned as is), or a Serializer instance."""
    if isinstance(value, Serializer):
        return value
    if isinstance(value, str):
        if value.lower() in _SERIALIZERS:
            return value.lower()
        if "." in value:
            return value
    raise ConfigurationError(
        f"serializer must be 'pickle', 'json', the dotted path of a Serializer class or "
        f"instance, or a Serializer instance, not {value!r}"
    )


# -- building -------------------------------------------------------------------------------


def _make_serializer(settings: _Settings) -> Serializer:
    value = settings.serializer
    if isinstance(value, Serializer):
        return value
    if value in _SERIALIZERS:
        return _SERIALIZERS[value]()
    module_name, _, attr = value.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"cannot import the serializer {value!r}: {exc}") from exc
    if isinstance(found, type) and issubclass(found, Serializer):
        try:
            return found()
        except TypeError as exc:
            raise ConfigurationError(
                f"cannot create the serializer {value!r} without arguments: {exc}; "
                "point the option at a ready Serializer instance instead"
            ) from exc
    if isinstance(found, Serializer):
        return found
    raise ConfigurationError(
        f"the serializer {value!r} is neither a Serializer subclass nor a Serializer instance"
    )


def _secrets(
    settings: _Settings, secret_key: t.Any, fallback_secrets: t.Any
) -> tuple[str | bytes, ...]:
    """The secrets to sign with (the first) and accept (all); empty when not signing."""
    if secret_key is not None and not isinstance(secret_key, (str, bytes)):
        raise ConfigurationError(f"secret_key must be a str, bytes or None, not {secret_key!r}")
    if isinstance(fallback_secrets, (str, bytes)):
        raise ConfigurationError("fallback_secrets must be a list of secrets, not one secret")
    fallbacks = tuple(s for s in fallback_secrets or () if s)
    for secret in fallbacks:
        if not isinstance(secret, (str, bytes)):
            raise ConfigurationError(f"fallback secrets must be str or bytes, not {secret!r}")
    sign = settings.sign if settings.sign is not None else bool(secret_key)
    if not sign:
        return ()
    if not secret_key:
        raise ConfigurationError(
            "sign=True needs a secret key to sign with (Django: set SECRET_KEY; Flask: set "
            "SECRET_KEY), or set sign=False to store unsigned payloads"
        )
    return (secret_key, *fallbacks)


def _digest(secrets: tuple[str | bytes, ...]) -> str:
    """A fingerprint of the signing keys, for the registry (the secrets are not kept)."""
    h = hashlib.sha256()
    for secret in secrets:
        raw = secret.encode("utf-8") if isinstance(secret, str) else secret
        h.update(hmac.new(SIGNING_SALT, raw, hashlib.sha256).digest())
    return h.hexdigest()


class _ConfiguredCache(TieredCache):
    """A :class:`~tieredcache.TieredCache` that also closes the offload made for it."""

    _owned_offload: ThreadPoolOffload | None = None

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            if self._owned_offload is not None:
                self._owned_offload.close(wait=True)


def _build(
    location: _Location, settings: _Settings, secrets: tuple[str | bytes, ...]
) -> TieredCache:
    serializer = _make_serializer(settings)
    if settings.compress_threshold is not None:
        serializer = CompressedSerializer(serializer, threshold=settings.compress_threshold)
    if secrets:
        serializer = SignedSerializer(
            secrets[0], serializer, fallbacks=secrets[1:], salt=SIGNING_SALT
        )
    store = MemoryBackend(
        settings.l1_maxsize,
        max_bytes=settings.l1_max_bytes,
        policy=settings.l1_policy,
        serializer=PickleSerializer(),
    )
    l1: Backend
    l2: Backend
    if location.kind == "memory":
        if settings.l1_ttl is not None:
            raise ConfigurationError(
                "l1_ttl bounds how long L1 keeps copies of L2 values, and a memory:// cache "
                "has no L2; remove l1_ttl (the cache's own timeouts apply)"
            )
        # The in-process store takes the composition's authoritative slot (L2), so that
        # add() and incr() are decided by a layer that stores; a NullBackend there would
        # accept every add and hold no integer to increment.
        l1, l2 = NullBackend(), store
    else:
        l1, l2 = store, _make_l2(location, settings, serializer)
    offload = None
    if settings.offload_workers is not None:
        from tieredcache.offload import ThreadPoolOffload

        offload = ThreadPoolOffload(max_workers=settings.offload_workers)
    backplane = None
    try:
        backplane = _make_backplane(location, settings)
        breaker: t.Any = None
        if settings.breaker_failures is not None and not l2.local:
            breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_after)
        cache = _ConfiguredCache(
            l1,
            l2,
            read=_make_policy(settings.read, _READ),
            write=_make_policy(settings.write, _WRITE),
            refill=_REFILL.get(settings.refill, settings.refill),
            offload=offload,
            l1_ttl=settings.l1_ttl,
            fail_open=settings.fail_open,
            breaker=breaker,
            backplane=backplane,
            jitter=settings.jitter,
        )
    except BaseException:
        try:
            l2.close()
            if backplane is not None:
                backplane.close()
        finally:
            if offload is not None:
                offload.close(wait=False)
        raise
    cache._owned_offload = offload
    return cache


def _make_backplane(location: _Location, settings: _Settings) -> t.Any:
    """The Redis backplane the options ask for, or None."""
    if settings.backplane is False:
        return None
    url = settings.backplane
    if url is True:
        if location.kind != "redis":
            raise ConfigurationError(
                "backplane=True publishes on the Redis location, and this location is not "
                "Redis; give the backplane a Redis URL instead (backplane='redis://...')"
            )
        url = location.target
    from tieredcache.backplane import RedisBackplane

    return RedisBackplane.from_url(url, channel=settings.backplane_channel)


def _make_policy(value: t.Any, factories: t.Mapping[str, t.Callable[[], t.Any]]) -> t.Any:
    """A new policy for a name (policies are cheap), or the policy object given."""
    return factories[value]() if isinstance(value, str) else value


def _make_l2(location: _Location, settings: _Settings, serializer: Serializer) -> Backend:
    timeouts: dict[str, t.Any] = {}
    if location.kind == "redis":
        from tieredcache.backends.redis import RedisBackend

        if settings.socket_timeout is not None:
            timeouts["socket_timeout"] = settings.socket_timeout
        if settings.connect_timeout is not None:
            timeouts["connect_timeout"] = settings.connect_timeout
        return RedisBackend.from_url(
            location.target, prefix=settings.l2_prefix, serializer=serializer, **timeouts
        )
    if location.kind == "memcached":
        from tieredcache.backends.memcached import MemcachedBackend

        if settings.socket_timeout is not None:
            timeouts["timeout"] = settings.socket_timeout
        if settings.connect_timeout is not None:
            timeouts["connect_timeout"] = settings.connect_timeout
        return MemcachedBackend(
            list(location.target), prefix=settings.l2_prefix, serializer=serializer, **timeouts
        )
    from tieredcache.backends.sqlite import SQLiteBackend

    if settings.l2_prefix:
        raise ConfigurationError(
            "l2_prefix is not supported for SQLite locations: give each cache its own file "
            "(sqlite:///path/one.sqlite3, sqlite:///path/two.sqlite3) instead"
        )
    return SQLiteBackend(location.target, serializer=serializer)


def build_cache(
    location: t.Any,
    options: t.Mapping[str, t.Any] | None = None,
    *,
    secret_key: str | bytes | None = None,
    fallback_secrets: t.Iterable[str | bytes] = (),
) -> TieredCache:
    """A new :class:`~tieredcache.TieredCache` for ``location`` configured by ``options``.

    L1 is a :class:`~tieredcache.MemoryBackend` of pickled values (so a returned object is
    never the cached one). L2 is what ``location`` names; its payloads are serialized by the
    ``serializer`` option, compressed above ``compress_threshold`` bytes, and signed with a
    key derived from ``secret_key`` (HMAC-SHA256, salt :data:`SIGNING_SALT`) unless
    ``sign`` is False. A payload signed with one of ``fallback_secrets`` is still accepted.
    Closing the cache also closes the offload made for ``offload_workers``.

    :param location: see the module documentation.
    :param options: see :data:`OPTIONS`; names are case-insensitive.
    :param secret_key: the secret to sign L2 payloads with; signing is on by default when
        one is given.
    :param fallback_secrets: older secrets still accepted on read.
    :raises ConfigurationError: a location, option or value is invalid; the message says
        what to fix.
    """
    parsed = _parse_location(location)
    settings = _parse_options(options)
    return _build(parsed, settings, _secrets(settings, secret_key, fallback_secrets))


# -- the process-wide registry --------------------------------------------------------------

_registry_lock = threading.Lock()
_registry: dict[tuple[t.Any, ...], TieredCache] = {}
_registry_pid = os.getpid()


def _reset_after_fork() -> None:
    # The parent's caches hold the parent's connections and threads: a child forgets them
    # (without closing them, which could disturb the parent) and builds its own.
    global _registry_lock, _registry, _registry_pid
    _registry_lock = threading.Lock()
    _registry = {}
    _registry_pid = os.getpid()


lifecycle.on_fork(_reset_after_fork, lifecycle.Stage.CACHES)


def shared_cache(
    location: t.Any,
    options: t.Mapping[str, t.Any] | None = None,
    *,
    secret_key: str | bytes | None = None,
    fallback_secrets: t.Iterable[str | bytes] = (),
) -> TieredCache:
    """The process's cache for this configuration, built by :func:`build_cache` on first use.

    Equal arguments (the same location, the same options, the same secrets) return the same
    :class:`~tieredcache.TieredCache`, so its L1, connection pool and offload are shared.
    Thread-safe. A forked child builds caches of its own. Do not close the returned cache;
    :func:`release_shared_caches` closes them all.

    :raises ConfigurationError: as :func:`build_cache`.
    """
    parsed = _parse_location(location)
    settings = _parse_options(options)
    secrets = _secrets(settings, secret_key, fallback_secrets)
    key = (parsed, settings, _digest(secrets) if secrets else None)
    if _registry_pid != os.getpid():  # a fork without register_at_fork
        _reset_after_fork()
    with _registry_lock:
        cache = _registry.get(key)
        if cache is None:
            cache = _registry[key] = _build(parsed, settings, secrets)
        return cache


def release_shared_caches() -> None:
    """Close and forget every cache :func:`shared_cache` made (for tests and shutdown).

    A cache that fails to close is logged and skipped; the others are still closed.
    """
    with _registry_lock:
        caches = list(_registry.values())
        _registry.clear()
    for cache in caches:
        try:
            cache.close()
        except Exception:
            logger.exception("tieredcache: closing the shared cache %r failed", cache)
