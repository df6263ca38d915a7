"""
Configuration
=============

A configured cache is a *location* (see :mod:`tieredcache.locations`) and a
:class:`~tieredcache.options.CacheOptions`. :func:`build_cache` turns them into a
:class:`~tieredcache.TieredCache`: an in-process L1 in front of the L2 that the location
names. :func:`shared_cache` keeps one such cache per configuration per process, so that
every framework object configured alike (Django makes a backend instance per thread and
alias) shares one L1, one connection pool and one offload. The Django and Flask
integrations and the ``tieredcache`` command all build here; :func:`build_l2` builds the
L2 store alone.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import os
import threading
import typing as t

from tieredcache import lifecycle
from tieredcache.backends.base import Backend
from tieredcache.backends.memory import MemoryBackend
from tieredcache.backends.null import NullBackend
from tieredcache.breaker import CircuitBreaker
from tieredcache.compressors import CompressingSerializer
from tieredcache.errors import ConfigurationError
from tieredcache.locations import SCHEMES
from tieredcache.locations import Location
from tieredcache.locations import parse_location
from tieredcache.options import DEFAULT_COMPRESS_THRESHOLD
from tieredcache.options import OPTIONS
from tieredcache.options import READ_POLICIES
from tieredcache.options import REFILLS
from tieredcache.options import SERIALIZERS
from tieredcache.options import WRITE_POLICIES
from tieredcache.options import CacheOptions
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
    "CacheOptions",
    "Location",
    "build_cache",
    "build_l2",
    "parse_location",
    "release_shared_caches",
    "shared_cache",
]

logger = logging.getLogger("tieredcache")

#: The salt of the HMAC that derives the signing key from a secret, so that a framework's
#: secret key is never itself the key that signs cache payloads.
SIGNING_SALT = b"tieredcache.contrib"


# -- building -------------------------------------------------------------------------------


def _make_serializer(settings: CacheOptions) -> Serializer:
    value = settings.serializer
    if isinstance(value, Serializer):
        return value
    if value in SERIALIZERS:
        return SERIALIZERS[value]()
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
    settings: CacheOptions, secret_key: t.Any, fallback_secrets: t.Any
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
    location: Location, settings: CacheOptions, secrets: tuple[str | bytes, ...]
) -> TieredCache:
    serializer = _make_serializer(settings)
    if settings.compressor is not None or settings.compress_threshold is not None:
        threshold = settings.compress_threshold
        serializer = CompressingSerializer(
            serializer,
            codec=settings.compressor or "zlib",
            threshold=DEFAULT_COMPRESS_THRESHOLD if threshold is None else threshold,
        )
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
    if location.kind != "redis" and (settings.password or settings.connection_pool_kwargs):
        raise ConfigurationError(
            "password and connection_pool_kwargs configure a Redis client, and this location "
            "is not Redis; remove them"
        )
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
            read=_make_policy(settings.read, READ_POLICIES),
            write=_make_policy(settings.write, WRITE_POLICIES),
            refill=REFILLS.get(settings.refill, settings.refill),
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


def _make_backplane(location: Location, settings: CacheOptions) -> t.Any:
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
    from tieredcache.redis.backplane import RedisBackplane

    return RedisBackplane.from_url(url, channel=settings.backplane_channel)


def _make_policy(value: t.Any, factories: t.Mapping[str, t.Callable[[], t.Any]]) -> t.Any:
    """A new policy for a name (policies are cheap), or the policy object given."""
    return factories[value]() if isinstance(value, str) else value


def build_l2(
    location: t.Any,
    options: CacheOptions | t.Mapping[str, t.Any] | None = None,
    *,
    serializer: Serializer | None = None,
) -> Backend:
    """The L2 store that ``location`` names, alone, configured by ``options``.

    Uses the options that concern the store (``l2_prefix``, ``socket_timeout``,
    ``connect_timeout``, ``password``, ``connection_pool_kwargs``); a ``memory://``
    location gives a :class:`~tieredcache.MemoryBackend` of ``l1_maxsize`` entries.

    :param location: see :mod:`tieredcache.locations`.
    :param serializer: the payload serializer (pickle by default).
    :raises ConfigurationError: the location or an option is invalid.
    """
    parsed = parse_location(location)
    settings = options if isinstance(options, CacheOptions) else CacheOptions.from_mapping(options)
    if parsed.kind == "memory":
        return MemoryBackend(
            settings.l1_maxsize,
            max_bytes=settings.l1_max_bytes,
            policy=settings.l1_policy,
            serializer=PickleSerializer(),
        )
    return _make_l2(parsed, settings, serializer or PickleSerializer())


def _make_l2(location: Location, settings: CacheOptions, serializer: Serializer) -> Backend:
    timeouts: dict[str, t.Any] = {}
    if location.kind == "redis":
        from tieredcache.backends.redis import RedisBackend

        if settings.socket_timeout is not None:
            timeouts["socket_timeout"] = settings.socket_timeout
        if settings.connect_timeout is not None:
            timeouts["connect_timeout"] = settings.connect_timeout
        client_options = dict(settings.connection_pool_kwargs)
        if settings.password is not None:
            client_options.setdefault("password", settings.password)
        return RedisBackend.from_url(
            location.target,
            prefix=settings.l2_prefix,
            serializer=serializer,
            **timeouts,
            **client_options,
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
    options: CacheOptions | t.Mapping[str, t.Any] | None = None,
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

    :param location: see :mod:`tieredcache.locations`.
    :param options: a :class:`~tieredcache.options.CacheOptions`, or a mapping of options
        (:meth:`~tieredcache.options.CacheOptions.from_mapping`; names are case-insensitive).
    :param secret_key: the secret to sign L2 payloads with; signing is on by default when
        one is given.
    :param fallback_secrets: older secrets still accepted on read.
    :raises ConfigurationError: a location, option or value is invalid; the message says
        what to fix.
    """
    parsed = parse_location(location)
    settings = options if isinstance(options, CacheOptions) else CacheOptions.from_mapping(options)
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
    options: CacheOptions | t.Mapping[str, t.Any] | None = None,
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
    parsed = parse_location(location)
    settings = options if isinstance(options, CacheOptions) else CacheOptions.from_mapping(options)
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
