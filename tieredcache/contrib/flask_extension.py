"""
The Flask extension
===================

:class:`TieredCacheExtension`, for Flask apps without Flask-Caching: it reads ``TIEREDCACHE_*``
config and proxies tieredcache's own API with tieredcache's semantics. Import it from
:mod:`tieredcache.contrib.flask`.
"""

from __future__ import annotations

import dataclasses
import typing as t

import flask

from tieredcache.config import shared_cache
from tieredcache.contrib.metrics import enable_metrics
from tieredcache.contrib.metrics import split_metrics
from tieredcache.entry import DEFAULT
from tieredcache.entry import validate_ttl
from tieredcache.errors import ConfigurationError
from tieredcache.errors import InvalidKeyError
from tieredcache.tiered import TieredCache as _CoreCache

__all__ = ["EXTENSION_KEY", "TieredCacheExtension", "TieredCacheState"]

#: The key of the extension's state in ``app.extensions``.
EXTENSION_KEY = "tieredcache"


@dataclasses.dataclass(frozen=True)
class TieredCacheState:
    """What :class:`TieredCacheExtension` keeps per app, in ``app.extensions["tieredcache"]``.

    :param cache: the shared :class:`tieredcache.TieredCache` of the app's configuration.
    :param key_prefix: prepended to every key the extension is given.
    :param default_ttl: the TTL used when a call gives none (``None`` = never expire).
    """

    cache: _CoreCache
    key_prefix: str
    default_ttl: float | None

    def key(self, key: str) -> str:
        """``key`` with the prefix."""
        if not isinstance(key, str):
            raise InvalidKeyError(f"cache keys must be str, not {type(key).__name__}")
        return self.key_prefix + key

    def ttl(self, ttl: t.Any) -> t.Any:
        """The TTL to pass to the cache: the app's default for ``DEFAULT``."""
        return self.default_ttl if ttl is DEFAULT else ttl


class TieredCacheExtension:
    """A Flask extension giving each app a tieredcache, for apps without Flask-Caching.

    Create it once, then call :meth:`init_app` for every app (the app factory pattern);
    ``TieredCacheExtension(app)`` does both. Config keys, read by :meth:`init_app`:

    - ``TIEREDCACHE_LOCATION``: ``None`` (default: the embedded in-process L1 plus SQLite
      L2), ``redis://...``, ``memcached://h:p,...``, ``sqlite:///path`` or ``memory://``;
    - ``TIEREDCACHE_DEFAULT_TTL``: seconds, default 300; ``None`` means never expire;
    - ``TIEREDCACHE_KEY_PREFIX``: prepended to every key, default ``""``;
    - ``TIEREDCACHE_OPTIONS``: a dict of tieredcache options (``l1_maxsize``, ``read``,
      ``write``, ``sign``, ...);
    - ``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``): L2 payloads are signed when it is set,
      unless ``TIEREDCACHE_OPTIONS`` has ``"sign": False``;
    - ``TIEREDCACHE_METRICS``: ``"prometheus"`` or ``"opentelemetry"`` reports the cache's
      figures (:mod:`tieredcache.contrib.metrics`), named ``TIEREDCACHE_METRICS_NAME``.

    The extension keeps no app: each call uses :data:`flask.current_app`'s cache, so one
    extension object serves several apps in one process. Its methods are tieredcache's
    own API with its semantics: ``ttl`` in seconds, ``None`` never expires, ``0`` or less
    stores nothing (and deletes the key), and a failing store raises
    :class:`~tieredcache.errors.BackendError`. Thread-safe.

    No teardown is registered: Flask tears down the app context after every request, and
    the shared caches must outlive it.
    """

    def __init__(self, app: flask.Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Build (or reuse) the app's cache from its config and register it.

        :raises ConfigurationError: a config value is invalid; the message names it.
        :raises RuntimeError: the extension is already registered on ``app``.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"tieredcache is already initialised on the app {app.name!r}; call "
                "init_app(app) once per app"
            )
        config = app.config
        prefix = config.get("TIEREDCACHE_KEY_PREFIX", "")
        if prefix is None:
            prefix = ""
        if not isinstance(prefix, str):
            raise ConfigurationError(
                f"TIEREDCACHE_KEY_PREFIX must be a str, not {type(prefix).__name__}"
            )
        default_ttl = validate_ttl(
            config.get("TIEREDCACHE_DEFAULT_TTL", 300), name="TIEREDCACHE_DEFAULT_TTL"
        )
        if default_ttl is not None and default_ttl <= 0:
            raise ConfigurationError(
                "TIEREDCACHE_DEFAULT_TTL must be a positive number of seconds, or None for no "
                f"expiry, not {config.get('TIEREDCACHE_DEFAULT_TTL')!r}"
            )
        options = config.get("TIEREDCACHE_OPTIONS")
        if options is not None and not isinstance(options, t.Mapping):
            raise ConfigurationError(
                "TIEREDCACHE_OPTIONS must be a dict of tieredcache options, "
                f"not {type(options).__name__}"
            )
        cache = shared_cache(
            config.get("TIEREDCACHE_LOCATION"),
            options,
            secret_key=config.get("SECRET_KEY"),
            fallback_secrets=config.get("SECRET_KEY_FALLBACKS") or (),
        )
        metrics = {"metrics": config.get("TIEREDCACHE_METRICS")}
        metrics["metrics_name"] = config.get("TIEREDCACHE_METRICS_NAME")
        _, kind, name = split_metrics({k: v for k, v in metrics.items() if v is not None})
        enable_metrics(cache, kind, name)
        app.extensions[EXTENSION_KEY] = TieredCacheState(cache, prefix, default_ttl)

    @staticmethod
    def state(app: flask.Flask | None = None) -> TieredCacheState:
        """The state of ``app`` (default: the current app).

        :raises RuntimeError: no app context, or the extension is not initialised on it.
        """
        if app is None:
            app = t.cast("flask.Flask", flask.current_app._get_current_object())  # type: ignore[attr-defined]
        try:
            return t.cast(TieredCacheState, app.extensions[EXTENSION_KEY])
        except KeyError:
            raise RuntimeError(
                f"tieredcache is not initialised on the app {app.name!r}; call "
                "TieredCacheExtension().init_app(app) in the app factory"
            ) from None

    @property
    def cache(self) -> _CoreCache:
        """The current app's :class:`tieredcache.TieredCache` (keys are not prefixed)."""
        return self.state().cache

    def get(self, key: str, default: t.Any = None) -> t.Any:
        """The value of ``key``, or ``default``."""
        state = self.state()
        return state.cache.get(state.key(key), default)

    def set(self, key: str, value: t.Any, ttl: t.Any = DEFAULT) -> None:
        """Store ``value`` for ``ttl`` seconds (default ``TIEREDCACHE_DEFAULT_TTL``)."""
        state = self.state()
        state.cache.set(state.key(key), value, state.ttl(ttl))

    def add(self, key: str, value: t.Any, ttl: t.Any = DEFAULT) -> bool:
        """Store ``value`` only if ``key`` holds none; whether it was stored."""
        state = self.state()
        return state.cache.add(state.key(key), value, state.ttl(ttl))

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it held a value."""
        state = self.state()
        return state.cache.delete(state.key(key))

    def get_many(self, keys: t.Iterable[str]) -> dict[str, t.Any]:
        """The values of the ``keys`` that hold one, keyed as given."""
        state = self.state()
        names = _names(state, keys)
        found = state.cache.get_many(list(names))
        return {names[name]: value for name, value in found.items()}

    def set_many(self, mapping: t.Mapping[str, t.Any], ttl: t.Any = DEFAULT) -> None:
        """Store every item for ``ttl`` seconds, in one batch."""
        state = self.state()
        items = {state.key(key): value for key, value in mapping.items()}
        state.cache.set_many(items, state.ttl(ttl))

    def delete_many(self, keys: t.Iterable[str]) -> int:
        """Remove ``keys``; how many held a value."""
        state = self.state()
        return state.cache.delete_many(list(_names(state, keys)))

    def incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to the integer under ``key`` atomically; the new value.

        :raises KeyError: the key holds no value (tieredcache's semantics, not cachelib's).
        """
        state = self.state()
        return state.cache.incr(state.key(key), delta)

    def decr(self, key: str, delta: int = 1) -> int:
        """Subtract ``delta``; see :meth:`incr`."""
        state = self.state()
        return state.cache.decr(state.key(key), delta)

    def touch(self, key: str, ttl: t.Any = DEFAULT) -> bool:
        """Give ``key`` a new TTL; whether it held a value."""
        state = self.state()
        return state.cache.touch(state.key(key), state.ttl(ttl))

    def has(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value."""
        state = self.state()
        return state.cache.has(state.key(key))

    def get_or_set(
        self,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any = DEFAULT,
        *,
        wait_timeout: float | None = None,
    ) -> t.Any:
        """The value of ``key``; on a miss, ``loader()``'s result, stored and returned.

        Concurrent callers in the process on a missing key run ``loader`` once.
        """
        state = self.state()
        return state.cache.get_or_set(
            state.key(key), loader, state.ttl(ttl), wait_timeout=wait_timeout
        )

    def clear(self) -> None:
        """Empty the current app's cache: the whole shared cache, whatever the key prefix
        (see :meth:`TieredCache.clear`)."""
        self.state().cache.clear()


def _names(state: TieredCacheState, keys: t.Iterable[str]) -> dict[str, str]:
    """Prefixed key -> key as given, in order."""
    if isinstance(keys, str):
        raise InvalidKeyError("expected an iterable of keys, got a single str")
    return {state.key(key): key for key in keys}
