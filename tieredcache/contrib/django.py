"""
Django cache backend
====================

:class:`TieredCache` is a Django cache backend: an in-process L1 in front of Redis,
memcached or a SQLite file, with Django's own cache semantics::

    CACHES = {
        "default": {
            "BACKEND": "tieredcache.contrib.django.TieredCache",
            "LOCATION": "redis://127.0.0.1:6379/0",
            "TIMEOUT": 300,
            "OPTIONS": {"MAX_ENTRIES": 10_000},
        }
    }

Django makes a backend instance per thread and per alias. Every instance with the same
``LOCATION``, ``OPTIONS`` and secret keys uses one process-wide
:class:`tieredcache.TieredCache` (:func:`tieredcache.config.shared_cache`), so they
share one L1, one connection pool and one offload; ``KEY_PREFIX``, ``VERSION`` and
``KEY_FUNCTION`` stay per alias, because keys are made before they reach it.

See ``docs/integrations/django.rst`` for every option.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
import re
import typing as t
from collections.abc import Mapping

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.base import default_key_func
from django.core.exceptions import ImproperlyConfigured

from tieredcache import config
from tieredcache import tiered
from tieredcache.contrib.django_redis_api import DjangoRedisAPI
from tieredcache.contrib.metrics import enable_metrics
from tieredcache.contrib.metrics import split_metrics
from tieredcache.entry import MAX_TTL
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.entry import validate_ttl
from tieredcache.errors import BackendError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.errors import SerializationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.locations import parse_location

__all__ = ["TieredCache"]

# What Django's memcache_key_warnings looks for, as one check: a key longer than memcached
# takes, or one holding a control character, a space or DEL.
_MEMCACHE_MAX_KEY_LENGTH = 250
_memcache_unsafe = re.compile("[\x00-\x20\x7f]").search


def _with_default_backplane(location: t.Any, options: dict[str, t.Any]) -> dict[str, t.Any]:
    """``options`` with ``BACKPLANE`` on when they leave it out and L2 is one Redis: the
    processes of a site then drop each other's changed keys from their L1 within
    milliseconds, as every process of a django-redis site reads Redis itself."""
    if any(name.upper() == "BACKPLANE" for name in options):
        return options
    try:
        kind = parse_location(location).kind
    except ConfigurationError:
        return options  # the cache reports it
    return {**options, "BACKPLANE": True} if kind == "redis" else options


# OPTIONS that configure this Django backend rather than the shared cache.
_BACKEND_OPTIONS = ("IGNORE_EXCEPTIONS", "LOG_IGNORED_EXCEPTIONS")

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def _omit_exception(return_value: t.Any = None) -> t.Callable[[F], F]:
    """With ``IGNORE_EXCEPTIONS``, a failing store answers ``return_value`` (as
    django-redis does), logged when ``LOG_IGNORED_EXCEPTIONS`` is set."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def run(self: TieredCache, *args: t.Any, **kwargs: t.Any) -> t.Any:
            try:
                return method(self, *args, **kwargs)
            except BackendError as exc:
                self._ignore(method.__name__, exc)
                value = return_value
                if method.__name__ == "get":
                    value = kwargs.get("default", args[1] if len(args) > 1 else None)
                return value

        return t.cast(F, run)

    return decorate


@contextlib.contextmanager
def _pickling() -> t.Iterator[None]:
    """Raise a value that cannot be serialized as Django's backends do: a PicklingError."""
    try:
        yield
    except DeserializationError:
        raise
    except SerializationError as exc:
        raise pickle.PicklingError(str(exc)) from exc


def _metrics_options(options: Mapping[str, t.Any]) -> tuple[dict[str, t.Any], t.Any, t.Any]:
    """OPTIONS without ``METRICS`` / ``METRICS_NAME``, and those two (see contrib.metrics)."""
    try:
        return split_metrics(options)
    except ConfigurationError as exc:
        raise ImproperlyConfigured(f"TieredCache: {exc}") from exc


class TieredCache(DjangoRedisAPI, BaseCache):
    """A Django cache backend on a process-wide :class:`tieredcache.TieredCache`.

    Thread-safe, although Django gives each thread its own instance; the instance holds
    only its settings, and the tiered cache it uses is shared and thread-safe.

    Semantics are Django's: ``timeout=None`` stores forever, ``0`` or less stores nothing
    and deletes any value, ``delete`` returns whether the key held a value, ``set_many``
    returns the keys it could not store, ``incr`` on a missing key raises ``ValueError``.
    Keys are made and validated by :meth:`make_and_validate_key`, so ``KEY_PREFIX``,
    ``VERSION`` and ``KEY_FUNCTION`` apply, and a key memcached could not take warns with
    ``CacheKeyWarning`` (the memcached layer stores it under a hash). Values are pickled
    in every layer, so a returned object is never the cached one. A value that cannot be
    pickled raises :class:`pickle.PicklingError` and writes nothing. A failing layer raises
    :class:`~tieredcache.errors.BackendError`, as Django's Redis backend lets its errors
    through.

    :param location: ``LOCATION``: a Redis URL, memcached servers, ``sqlite:///path``,
        ``memory://``, or empty for the embedded SQLite default.
    :param params: the rest of the ``CACHES`` entry (``TIMEOUT``, ``KEY_PREFIX``,
        ``VERSION``, ``KEY_FUNCTION``, ``OPTIONS``).
    :raises ImproperlyConfigured: the location or an option is invalid.
    """

    def __init__(self, location: t.Any, params: dict[str, t.Any]) -> None:
        options = params.get("OPTIONS") or {}
        if not isinstance(options, Mapping):
            problem = ConfigurationError(
                f"OPTIONS must be a mapping (a dict), not {type(options).__name__}"
            )
            raise ImproperlyConfigured(f"{type(self).__name__}: {problem}") from problem
        options, metrics, metrics_name = _metrics_options(options)
        # TIMEOUT, KEY_PREFIX, VERSION, KEY_FUNCTION and MAX_ENTRIES are read by Django's
        # own BaseCache, exactly as every Django backend reads them.
        super().__init__({**params, "OPTIONS": options})
        backend_options = {
            k.upper(): v for k, v in options.items() if k.upper() in _BACKEND_OPTIONS
        }
        options = {k: v for k, v in options.items() if k.upper() not in _BACKEND_OPTIONS}
        if "MAX_ENTRIES" in options:
            options["MAX_ENTRIES"] = self._max_entries
        self._ignore_exceptions = bool(
            backend_options.get(
                "IGNORE_EXCEPTIONS", getattr(settings, "DJANGO_REDIS_IGNORE_EXCEPTIONS", False)
            )
        )
        log_ignored = backend_options.get(
            "LOG_IGNORED_EXCEPTIONS",
            getattr(settings, "DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS", False),
        )
        self._log_ignored = (
            logging.getLogger(getattr(settings, "DJANGO_REDIS_LOGGER", None) or __name__)
            if log_ignored
            else None
        )
        try:
            secret = settings.SECRET_KEY
        except ImproperlyConfigured:  # an empty SECRET_KEY: nothing to sign with
            secret = None
        fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", ())
        cls = type(self)
        # Django's own make_key and validate_key are known: keys are made and checked here in
        # one pass. A subclass that overrides either gets Django's path.
        self._plain_keys = (
            cls.make_key is BaseCache.make_key and cls.validate_key is BaseCache.validate_key
        )
        try:
            options = _with_default_backplane(location, options)
            self._tiered = config.shared_cache(
                location, options, secret_key=secret or None, fallback_secrets=fallbacks
            )
            enable_metrics(self._tiered, metrics, metrics_name)
        except ConfigurationError as exc:
            # The message names the problem; LOCATION itself may hold a password.
            raise ImproperlyConfigured(f"{type(self).__name__}: {exc}") from exc

    def make_and_validate_key(self, key: t.Any, version: int | None = None) -> t.Any:
        """Django's key for ``key``, made and validated as Django does, in one pass.

        With Django's own key function the made key is checked by one precompiled pattern
        (its length and the characters memcached refuses); only a key that fails that check
        goes through Django's ``validate_key``, which warns with ``CacheKeyWarning``.
        """
        if self._plain_keys and self.key_func is default_key_func:
            made = f"{self.key_prefix}:{self.version if version is None else version}:{key}"
            if len(made) > _MEMCACHE_MAX_KEY_LENGTH or _memcache_unsafe(made) is not None:
                self.validate_key(made)
            return made
        return super().make_and_validate_key(key, version=version)

    def _ignore(self, operation: str, exc: BackendError) -> None:
        """Re-raise ``exc`` unless ``IGNORE_EXCEPTIONS`` is set; log it if asked to."""
        if not self._ignore_exceptions:
            raise exc
        if self._log_ignored is not None:
            self._log_ignored.exception("tieredcache: %s failed: %s", operation, exc)

    @property
    def tiered(self) -> tiered.TieredCache:
        """The process-wide :class:`tieredcache.TieredCache` this backend uses."""
        return self._tiered

    def get_backend_timeout(self, timeout: t.Any = DEFAULT_TIMEOUT) -> float | None:
        """The TTL in seconds for a Django ``timeout``: the one place timeouts are converted.

        ``DEFAULT_TIMEOUT`` is the ``TIMEOUT`` setting; ``None``, or more than 100 years
        (:data:`~tieredcache.entry.MAX_TTL`), is forever; ``0`` or less is ``0.0``, which
        stores nothing and deletes any value.
        """
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if number and timeout > MAX_TTL:
            return None  # as Django's other backends store it: in effect, forever
        ttl = validate_ttl(timeout, name="timeout")
        if ttl is not None and ttl <= 0:
            return 0.0
        return ttl

    # -- single keys ----------------------------------------------------------------

    @_omit_exception()
    def get(self, key: t.Any, default: t.Any = None, version: int | None = None) -> t.Any:
        # make_and_validate_key() inlined: a hit is one format, one check and one L1 read.
        if self._plain_keys and self.key_func is default_key_func:
            made = f"{self.key_prefix}:{self.version if version is None else version}:{key}"
            if len(made) > _MEMCACHE_MAX_KEY_LENGTH or _memcache_unsafe(made) is not None:
                self.validate_key(made)
        else:
            made = self.make_and_validate_key(key, version=version)
        return self._tiered.get(made, default)

    @_omit_exception()
    def set(
        self,
        key: t.Any,
        value: t.Any,
        timeout: t.Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> bool:
        """Store ``value``; True if it was stored.

        ``nx=True`` stores only if the key holds no value (as :meth:`add`); ``xx=True``
        only if it holds one (checked, then written: not atomic across processes).
        """
        if nx:
            return self.add(key, value, timeout, version)
        made = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if xx and not self._tiered.has(made):
            return False
        with _pickling():
            try:
                self._tiered.set(made, value, ttl)
            except ValueTooLargeError:
                # L1 may already hold the value that L2 refused: no layer keeps it.
                self._tiered.delete(made)
                raise
        return True

    @_omit_exception()
    def add(
        self,
        key: t.Any,
        value: t.Any,
        timeout: t.Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> bool:
        made = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        if ttl == 0:
            # Expires at once: nothing is stored; True when the key was free, as Django's
            # Redis backend answers.
            return not self._tiered.has(made)
        with _pickling():
            return self._tiered.add(made, value, ttl)

    @_omit_exception()
    def touch(
        self, key: t.Any, timeout: t.Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made = self.make_and_validate_key(key, version=version)
        return self._tiered.touch(made, self.get_backend_timeout(timeout))

    @_omit_exception()
    def delete(self, key: t.Any, version: int | None = None) -> bool:
        return self._tiered.delete(self.make_and_validate_key(key, version=version))

    @_omit_exception()
    def has_key(self, key: t.Any, version: int | None = None) -> bool:
        """Whether ``key`` holds a value; with Redis, also a lock, hash or set under it
        (django-redis's ``has_key`` is ``EXISTS``), asked only when no entry is found."""
        made = self.make_and_validate_key(key, version=version)
        return self._tiered.has(made) or self._in_redis_only(made)

    @_omit_exception()
    def incr(
        self,
        key: t.Any,
        delta: int = 1,
        version: int | None = None,
        ignore_key_check: bool = False,
    ) -> int:
        """Add ``delta`` atomically (where the L2 store is atomic); keeps the expiry.

        :param ignore_key_check: a missing key is created with the value ``delta`` and
            no expiry (django-redis's option) instead of raising.
        :raises ValueError: the key holds no value.
        :raises TypeError: the value or ``delta`` is not an integer.
        """
        made = self.make_and_validate_key(key, version=version)
        while True:
            try:
                return self._tiered.incr(made, delta)
            except KeyError:
                if not ignore_key_check:
                    raise ValueError(f"Key '{key}' not found") from None
            if self._tiered.add(made, delta, None):
                return delta

    @_omit_exception()
    def decr(self, key: t.Any, delta: int = 1, version: int | None = None) -> int:
        """Subtract ``delta``; see :meth:`incr`."""
        return self.incr(key, -delta, version)

    @_omit_exception()
    def incr_version(self, key: t.Any, delta: int = 1, version: int | None = None) -> int:
        """Move the value to version ``version + delta``, with the expiry it had (as
        django-redis keeps it; Django's generic method gives it the default timeout).

        :raises ValueError: the key holds no value.
        """
        if version is None:
            version = self.version
        old = self.make_and_validate_key(key, version=version)
        new = self.make_and_validate_key(key, version=version + delta)
        entry = self._tiered.get_entry(old)
        if entry is None:
            raise ValueError(f"Key '{key}' not found")
        moved = Entry(entry.value, entry.expires_at, next_version(), entry.stale_at, entry.tags)
        with _pickling():
            self._tiered.set_entry(new, moved)
        self._tiered.delete(old)
        return version + delta

    @_omit_exception()
    def get_or_set(
        self,
        key: t.Any,
        default: t.Any,
        timeout: t.Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> t.Any:
        """The value under ``key``; on a miss, ``default`` (called if callable), stored.

        Concurrent callers in the process on a missing key call ``default`` once.
        """
        made = self.make_and_validate_key(key, version=version)
        ttl = self.get_backend_timeout(timeout)
        loaded: list[t.Any] = []

        def loader() -> t.Any:
            loaded.append(default() if callable(default) else default)
            return loaded[-1]

        with _pickling():
            try:
                return self._tiered.get_or_set(made, loader, ttl)
            except BackendError as exc:
                self._ignore("get_or_set", exc)
                # As django-redis: the store failed, the default is still the answer (made
                # now if the failure came before the loader ran).
                return loaded[-1] if loaded else loader()

    # -- many keys --------------------------------------------------------------------

    @_omit_exception(return_value={})
    def get_many(self, keys: t.Iterable[t.Any], version: int | None = None) -> dict[t.Any, t.Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = self._tiered.get_many(list(made))
        return {key: found[m] for m, key in made.items() if m in found}

    @_omit_exception()
    def set_many(
        self,
        data: t.Mapping[t.Any, t.Any],
        timeout: t.Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[t.Any]:
        """Store every item; return the keys that a layer refused as too large."""
        made = {self.make_and_validate_key(key, version=version): key for key in data}
        ttl = self.get_backend_timeout(timeout)
        values = {m: data[key] for m, key in made.items()}
        with _pickling():
            try:
                self._tiered.set_many(values, ttl)
            except ValueTooLargeError:
                return self._set_each(made, values, ttl)
        return []

    def _set_each(
        self, made: dict[str, t.Any], values: dict[str, t.Any], ttl: float | None
    ) -> list[t.Any]:
        failed = []
        for m, key in made.items():
            try:
                self._tiered.set(m, values[m], ttl)
            except ValueTooLargeError:
                self._tiered.delete(m)
                failed.append(key)
        return failed

    @_omit_exception()
    def delete_many(self, keys: t.Iterable[t.Any], version: int | None = None) -> int | None:
        """Delete ``keys``; how many held a value (``None`` when no key is given, as
        Django's backends answer)."""
        made = [self.make_and_validate_key(k, version=version) for k in keys]
        if not made:
            return None
        return self._tiered.delete_many(made)

    # -- whole cache --------------------------------------------------------------------

    @_omit_exception()
    def clear(self) -> None:
        """Remove every entry of the shared cache, whatever its ``KEY_PREFIX``.

        With Redis this deletes the keys under ``L2_PREFIX`` only, and also this alias's
        hashes, sets and locks (the keys its ``KEY_PREFIX`` makes, in every version);
        memcached cannot delete by prefix and empties its servers, as Django's memcached
        backends do.
        """
        self._tiered.clear()
        self._clear_structures()

    def close(self, **kwargs: t.Any) -> None:
        """Nothing to do: Django calls this after every request, and the L1, connection
        pools and offload are shared by the whole process. They are closed by
        :func:`tieredcache.config.release_shared_caches` (and at exit).
        """

    # -- async: each runs the atomic sync method in a thread ---------------------------
    # BaseCache builds these from aget/aset; the sync methods here are atomic (incr) or
    # batched (the _many forms), so the async forms call them instead.

    async def aget_many(
        self, keys: t.Iterable[t.Any], version: int | None = None
    ) -> dict[t.Any, t.Any]:
        return await sync_to_async(self.get_many, thread_sensitive=True)(keys, version)

    async def aset_many(
        self,
        data: t.Mapping[t.Any, t.Any],
        timeout: t.Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[t.Any]:
        return await sync_to_async(self.set_many, thread_sensitive=True)(data, timeout, version)

    async def adelete_many(self, keys: t.Iterable[t.Any], version: int | None = None) -> int | None:
        return await sync_to_async(self.delete_many, thread_sensitive=True)(keys, version)

    async def ahas_key(self, key: t.Any, version: int | None = None) -> bool:
        return await sync_to_async(self.has_key, thread_sensitive=True)(key, version)

    async def aincr(self, key: t.Any, delta: int = 1, version: int | None = None) -> int:
        return await sync_to_async(self.incr, thread_sensitive=True)(key, delta, version)

    async def adecr(self, key: t.Any, delta: int = 1, version: int | None = None) -> int:
        return await sync_to_async(self.decr, thread_sensitive=True)(key, delta, version)

    async def aget_or_set(
        self,
        key: t.Any,
        default: t.Any,
        timeout: t.Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> t.Any:
        return await sync_to_async(self.get_or_set, thread_sensitive=True)(
            key, default, timeout, version
        )

    async def aincr_version(self, key: t.Any, delta: int = 1, version: int | None = None) -> int:
        run = sync_to_async(self.incr_version, thread_sensitive=True)
        return await run(key, delta, version)

    async def adecr_version(self, key: t.Any, delta: int = 1, version: int | None = None) -> int:
        run = sync_to_async(self.decr_version, thread_sensitive=True)
        return t.cast(int, await run(key, delta, version))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} key_prefix={self.key_prefix!r} {self._tiered!r}>"
