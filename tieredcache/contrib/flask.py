"""
Flask
=====

Two ways to use tieredcache in a Flask application:

- :class:`TieredCache`, a Flask-Caching (and cachelib) backend, for
  ``CACHE_TYPE = "tieredcache.contrib.flask.TieredCache"``. It honours cachelib's contract:
  cachelib's return values, cachelib's timeouts (``None`` is the default timeout, ``0``
  never expires) and cachelib's habit of returning ``False``/``None`` instead of raising
  when the store fails. ``@cache.cached`` and ``@cache.memoize`` work on it.
- :class:`TieredCacheExtension`, a small extension for apps without Flask-Caching. It is
  configured from ``TIEREDCACHE_*`` keys and proxies tieredcache's own API (``get``,
  ``set``, ``get_or_set``, ...), with tieredcache's semantics: ``ttl`` in seconds, ``None``
  never expires, ``0`` stores nothing, and store failures raise.

Both build their caches with :func:`tieredcache.config.shared_cache`, so every app
and every Flask-Caching object configured alike in one process shares one L1, one connection
pool and one offload. Nothing is closed at the end of a request or app context: the shared
caches live as long as the process (background writes are drained at interpreter exit by the
offload's own exit hook); :func:`~tieredcache.config.release_shared_caches` closes
them explicitly.
"""

from __future__ import annotations

import datetime as dt
import logging
import typing as t
import urllib.parse

from tieredcache.config import shared_cache
from tieredcache.contrib.metrics import enable_metrics
from tieredcache.contrib.metrics import split_metrics
from tieredcache.entry import MAX_TTL
from tieredcache.entry import validate_ttl
from tieredcache.errors import BackendError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import InvalidKeyError
from tieredcache.errors import SerializationError
from tieredcache.tiered import TieredCache as _CoreCache

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigurationError(
        "tieredcache.contrib.flask needs Flask: pip install tieredcache[flask]"
    ) from exc

if t.TYPE_CHECKING:
    from cachelib import BaseCache as _CacheBase
    from cachelib.serializers import SimpleSerializer as _PickleCodec
else:
    # Flask-Caching calls ``factory(app, config, args, kwargs)`` only on subclasses of its
    # own BaseCache (itself a cachelib.BaseCache); without Flask-Caching the class is a
    # plain cachelib backend, and without cachelib a standalone class with the same API.
    try:
        from flask_caching.backends.base import BaseCache as _CacheBase
    except ImportError:
        try:
            from cachelib import BaseCache as _CacheBase
        except ImportError:
            _CacheBase = object
    try:
        from cachelib.serializers import SimpleSerializer as _PickleCodec
    except ImportError:
        _PickleCodec = None

# After the Flask check above, which turns a missing Flask into a ConfigurationError.
from tieredcache.contrib.flask_extension import EXTENSION_KEY
from tieredcache.contrib.flask_extension import TieredCacheExtension
from tieredcache.contrib.flask_extension import TieredCacheState

__all__ = ["EXTENSION_KEY", "TieredCache", "TieredCacheExtension", "TieredCacheState"]

logger = logging.getLogger("tieredcache")

_Timeout = t.Union[int, float, dt.timedelta, None]
_KeyPrefix = t.Union[str, t.Callable[[], str], None]


def _seconds(timeout: t.Any, name: str) -> float:
    """A cachelib timeout (a number of seconds or a timedelta) as float seconds."""
    if isinstance(timeout, dt.timedelta):
        return timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or a datetime.timedelta, "
            f"not {type(timeout).__name__}"
        )
    # An int beyond any float is just "too long" (or, negative, "store nothing").
    return float(max(min(timeout, MAX_TTL + 1), -MAX_TTL - 1))


def _redis_url_of(config: t.Mapping[str, t.Any]) -> str | None:
    """The Redis URL of Flask-Caching's ``CACHE_REDIS_HOST``/``PORT``/``DB``/``PASSWORD``
    keys, or ``None`` when none is set (the host defaults to localhost, as there)."""
    names = ("CACHE_REDIS_HOST", "CACHE_REDIS_PORT", "CACHE_REDIS_DB", "CACHE_REDIS_PASSWORD")
    if all(config.get(name) is None for name in names):
        return None
    host = str(config.get("CACHE_REDIS_HOST") or "localhost")
    password = config.get("CACHE_REDIS_PASSWORD")
    auth = "" if password is None else ":" + urllib.parse.quote(str(password), safe="") + "@"
    netloc = f"[{host}]" if ":" in host else host
    port, db = config.get("CACHE_REDIS_PORT") or 6379, config.get("CACHE_REDIS_DB") or 0
    return f"redis://{auth}{netloc}:{port}/{db}"


class TieredCache(_CacheBase):
    """A Flask-Caching and cachelib backend over a shared :class:`tieredcache.TieredCache`.

    Use it from Flask-Caching with ``CACHE_TYPE = "tieredcache.contrib.flask.TieredCache"``
    (see :meth:`factory` for the config keys it reads), or construct it directly as
    cachelib's own backends are. Thread-safe: every instance configured alike uses one
    process-wide cache, whose L1, connection pool and offload are shared.

    Timeouts follow cachelib, not tieredcache's core (nor Django): ``timeout=None`` means
    ``default_timeout``, ``0`` means the value never expires, and a negative timeout stores
    nothing (``set`` deletes the key). Timeouts are seconds (fractions are kept, where
    cachelib rounds up) or a :class:`datetime.timedelta`.

    Store failures follow cachelib too: they are logged on the ``tieredcache`` logger and
    reported as cachelib reports them, never raised. ``set``, ``add``, ``delete`` and
    ``clear`` return ``False``; ``get`` returns ``None`` and ``has`` ``False`` (a miss);
    ``get_many`` returns ``None`` for every key; ``set_many`` returns ``[]``; ``inc`` and
    ``dec`` return ``None``; ``delete_many`` raises ``RuntimeError`` unless
    ``ignore_delete_many_errors`` is true, and then returns ``[]``. A value that cannot be
    serialized still raises :class:`~tieredcache.errors.SerializationError`, as cachelib
    lets pickling errors through.

    Values go through :attr:`serializer`, a cachelib serializer, as on cachelib's own
    backends: assign another one to the instance (Flask-Caching does so for
    ``CACHE_SERIALIZER``) or override the attribute in a subclass. The default,
    cachelib's ``SimpleSerializer`` (pickle), is left to tieredcache's own pickling. Any
    other serializer encodes each value to bytes before it reaches the cache, so every
    tier holds, and every read decodes, the same bytes; integers stay as they are, as
    with cachelib's Redis serializer, so that :meth:`inc` stays atomic. Instances that
    share a location and key prefix must use the same serializer.

    :param location: the cache location: ``None`` or ``""`` for the embedded default (an
        in-process L1 in front of a SQLite file), ``redis://...``, ``memcached://h:p,...``,
        ``sqlite:///path`` or ``memory://`` (see :mod:`tieredcache.config`).
    :param default_timeout: the timeout used when a call gives none, in seconds or a
        timedelta; ``0`` (or ``None``) means values never expire.
    :param key_prefix: prepended to every key; a str, or a callable returning one (called
        for every key, as cachelib's Redis backend does).
    :param ignore_delete_many_errors: when false, :meth:`delete_many` raises
        ``RuntimeError`` if the store fails.
    :param secret_key: L2 payloads are signed with a key derived from it (HMAC-SHA256), so
        that whoever can write to Redis or memcached cannot feed this process a forged
        pickle; give ``sign=False`` to store unsigned payloads.
    :param fallback_secrets: older secrets whose signatures are still accepted on read.
    :param metrics: ``"prometheus"`` or ``"opentelemetry"`` reports the cache's figures
        (:mod:`tieredcache.contrib.metrics`) under ``metrics_name``.
    :param options: tieredcache options (``l1_maxsize``, ``l1_ttl``, ``read``, ``write``,
        ``serializer``, ``sign``, ...), passed to
        :func:`~tieredcache.config.shared_cache`.
    :raises ConfigurationError: the location, an option or a value is invalid.
    """

    #: The cachelib serializer (``dumps``/``loads``) values go through.
    serializer: t.Any = _PickleCodec() if _PickleCodec is not None else None

    def __init__(
        self,
        location: t.Any = None,
        default_timeout: _Timeout = 300,
        key_prefix: _KeyPrefix = None,
        ignore_delete_many_errors: bool = True,
        *,
        secret_key: str | bytes | None = None,
        fallback_secrets: t.Iterable[str | bytes] = (),
        metrics: str | None = None,
        metrics_name: str | None = None,
        **options: t.Any,
    ) -> None:
        # cachelib's BaseCache.__init__ only sets these two attributes, and would warn
        # about float timeouts that tieredcache stores exactly; set them here instead.
        if default_timeout is None:
            default_timeout = 0
        try:
            seconds = _seconds(default_timeout, "default_timeout")
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from None
        validate_ttl(seconds, name="default_timeout")
        if seconds < 0:
            raise ConfigurationError(
                f"default_timeout must be >= 0 (0 means never expire), not {default_timeout!r}"
            )
        self.default_timeout: t.Any = int(seconds) if seconds.is_integer() else seconds
        self.ignore_delete_many_errors = bool(ignore_delete_many_errors)
        if key_prefix is not None and not isinstance(key_prefix, str) and not callable(key_prefix):
            raise ConfigurationError(
                f"key_prefix must be a str, a callable returning one, or None, not {key_prefix!r}"
            )
        self.key_prefix: str | t.Callable[[], str] = key_prefix or ""
        self.location = location
        #: The shared :class:`tieredcache.TieredCache` this backend stores in.
        self.cache: _CoreCache = shared_cache(
            location, options, secret_key=secret_key, fallback_secrets=fallback_secrets
        )
        enable_metrics(self.cache, split_metrics({"metrics": metrics})[1], metrics_name)

    @classmethod
    def factory(
        cls,
        app: flask.Flask,
        config: t.Mapping[str, t.Any],
        args: t.Sequence[t.Any],
        kwargs: t.Mapping[str, t.Any],
    ) -> TieredCache:
        """Build the backend for Flask-Caching, which calls ``factory(app, config, args,
        kwargs)`` with the merged configuration.

        Config keys read:

        - ``CACHE_TIEREDCACHE_LOCATION``, else ``CACHE_REDIS_URL``, else the Redis that
          ``CACHE_REDIS_HOST``, ``CACHE_REDIS_PORT``, ``CACHE_REDIS_DB`` and
          ``CACHE_REDIS_PASSWORD`` name (as for Flask-Caching's RedisCache), else the
          embedded default;
        - ``CACHE_DEFAULT_TIMEOUT`` (cachelib semantics), ``CACHE_KEY_PREFIX``,
          ``CACHE_IGNORE_ERRORS`` (``ignore_delete_many_errors``);
        - ``CACHE_OPTIONS``: a dict of tieredcache options (Flask-Caching also merges it
          into ``kwargs``);
        - the app's ``SECRET_KEY`` (L2 payloads are signed when it is set, unless
          ``CACHE_OPTIONS`` has ``"sign": False``) and ``SECRET_KEY_FALLBACKS``;
        - ``CACHE_TIEREDCACHE_METRICS`` (``"prometheus"`` or ``"opentelemetry"``) and
          ``CACHE_TIEREDCACHE_METRICS_NAME``: report the cache's figures.

        ``CACHE_ARGS``, if given, fill ``location``, ``default_timeout`` and ``key_prefix``
        positionally, in that order.

        :raises ConfigurationError: the configuration is invalid.
        """
        extra = config.get("CACHE_OPTIONS")
        if extra is not None and not isinstance(extra, t.Mapping):
            raise ConfigurationError(
                f"CACHE_OPTIONS must be a dict of tieredcache options, not {type(extra).__name__}"
            )
        options: dict[str, t.Any] = dict(extra or {})
        options.update(kwargs)
        named: dict[str, t.Any] = {
            "location": config.get("CACHE_TIEREDCACHE_LOCATION")
            or config.get("CACHE_REDIS_URL")
            or _redis_url_of(config),
            "default_timeout": options.pop(
                "default_timeout", config.get("CACHE_DEFAULT_TIMEOUT", 300)
            ),
            "key_prefix": config.get("CACHE_KEY_PREFIX"),
        }
        positional = list(args)
        if len(positional) > len(named):
            raise ConfigurationError(
                f"CACHE_ARGS takes at most {len(named)} values ({', '.join(named)}), "
                f"not {len(positional)}"
            )
        for name in list(named)[: len(positional)]:
            del named[name]
        named["ignore_delete_many_errors"] = options.pop(
            "ignore_delete_many_errors", config.get("CACHE_IGNORE_ERRORS", False)
        )
        options.setdefault("metrics", config.get("CACHE_TIEREDCACHE_METRICS"))
        options.setdefault("metrics_name", config.get("CACHE_TIEREDCACHE_METRICS_NAME"))
        # Flask-Caching's config is the app's config updated with the Cache object's own.
        options.setdefault("secret_key", config.get("SECRET_KEY", app.config.get("SECRET_KEY")))
        fallbacks = config.get("SECRET_KEY_FALLBACKS", app.config.get("SECRET_KEY_FALLBACKS"))
        options.setdefault("fallback_secrets", fallbacks or ())
        # As in Flask-Caching, CACHE_OPTIONS override the CACHE_* keys.
        return cls(*positional, **{**named, **options})

    # -- helpers ----------------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"cache keys must be str, not {type(key).__name__}")
        prefix = self.key_prefix if isinstance(self.key_prefix, str) else self.key_prefix()
        return prefix + key

    def _ttl(self, timeout: _Timeout) -> float | None:
        """A cachelib timeout as a core TTL: ``None`` forever, ``<= 0`` do not store."""
        seconds = _seconds(self.default_timeout if timeout is None else timeout, "timeout")
        # cachelib's 0 is "never expire", as is anything beyond 100 years (MAX_TTL), which
        # cachelib's stores keep in effect forever; a negative timeout keeps the core's
        # meaning, "store nothing".
        return None if seconds == 0 or seconds > MAX_TTL else seconds

    def _codec(self) -> t.Any:
        """The serializer to encode with, or ``None`` for tieredcache's own pickling."""
        codec = self.serializer
        if codec is None or type(codec) is _PickleCodec:
            return None
        return codec

    @staticmethod
    def _dump(codec: t.Any, name: str, value: t.Any) -> t.Any:
        if codec is None or type(value) is int:
            return value
        data = codec.dumps(value)
        if not isinstance(data, bytes):
            # cachelib's serializers log their error and return None.
            raise SerializationError(
                f"{type(codec).__name__}.dumps could not serialize the value of {name!r}"
            )
        return data

    def _load(self, codec: t.Any, name: str, value: t.Any) -> t.Any:
        if codec is None or not isinstance(value, bytes):
            return value
        try:
            return codec.loads(value)
        except Exception as exc:
            # Unreadable is a miss, never a crash (as for tieredcache's own payloads).
            self._log_failure("loads", name, exc)
            return None

    @staticmethod
    def _log_failure(operation: str, keys: t.Any, exc: BaseException) -> None:
        logger.warning(
            "flask: %s of %r failed, reported as cachelib does: %r", operation, keys, exc
        )

    # -- cachelib API -----------------------------------------------------------------

    def get(self, key: str) -> t.Any:
        """The value of ``key``, or ``None`` when it is missing, expired or unreadable."""
        name = self._key(key)
        try:
            value = self.cache.get(name)
        except BackendError as exc:
            self._log_failure("get", name, exc)
            return None
        return self._load(self._codec(), name, value)

    def get_many(self, *keys: str) -> list[t.Any]:
        """The values of ``keys`` in order, ``None`` for each miss."""
        names = [self._key(key) for key in keys]
        if not names:
            return []
        try:
            found = self.cache.get_many(names)
        except BackendError as exc:
            self._log_failure("get_many", names, exc)
            return [None] * len(names)
        codec = self._codec()
        return [self._load(codec, name, found.get(name)) for name in names]

    def get_dict(self, *keys: str) -> dict[str, t.Any]:
        """Like :meth:`get_many`, as a dict keyed by the given keys."""
        return dict(zip(keys, self.get_many(*keys)))

    def has(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value (``False`` when the store fails)."""
        name = self._key(key)
        try:
            return self.cache.has(name)
        except BackendError as exc:
            self._log_failure("has", name, exc)
            return False

    def set(self, key: str, value: t.Any, timeout: _Timeout = None) -> bool:
        """Store ``value`` under ``key``; ``True`` on success, ``False`` when the store fails."""
        name = self._key(key)
        ttl = self._ttl(timeout)
        value = self._dump(self._codec(), name, value)
        try:
            self.cache.set(name, value, ttl)
        except BackendError as exc:
            self._log_failure("set", name, exc)
            return False
        return True

    def add(self, key: str, value: t.Any, timeout: _Timeout = None) -> bool:
        """Store ``value`` only if ``key`` holds none; ``False`` if it does or the store
        fails (and for a negative timeout, which stores nothing)."""
        name = self._key(key)
        ttl = self._ttl(timeout)
        value = self._dump(self._codec(), name, value)
        try:
            return self.cache.add(name, value, ttl)
        except BackendError as exc:
            self._log_failure("add", name, exc)
            return False

    def set_many(self, mapping: t.Mapping[str, t.Any], timeout: _Timeout = None) -> list[t.Any]:
        """Store every item in one batch; the keys that were set (``[]`` on failure)."""
        codec = self._codec()
        items = {}
        for key, value in mapping.items():
            name = self._key(key)
            items[name] = self._dump(codec, name, value)
        ttl = self._ttl(timeout)
        if not items:
            return []
        try:
            self.cache.set_many(items, ttl)
        except BackendError as exc:
            self._log_failure("set_many", list(items), exc)
            return []
        return list(mapping)

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it held a value (``False`` when the store fails)."""
        name = self._key(key)
        try:
            return self.cache.delete(name)
        except BackendError as exc:
            self._log_failure("delete", name, exc)
            return False

    def delete_many(self, *keys: str) -> list[t.Any]:
        """Remove ``keys`` in one batch; the keys now absent, which as in cachelib includes
        keys that held no value.

        :raises RuntimeError: the store failed and ``ignore_delete_many_errors`` is false.
        """
        names = [self._key(key) for key in keys]
        if not names:
            return []
        try:
            self.cache.delete_many(names)
        except BackendError as exc:
            if not self.ignore_delete_many_errors:
                raise RuntimeError(f"Failed to delete keys: {list(keys)}") from exc
            self._log_failure("delete_many", names, exc)
            return []
        return list(keys)

    def clear(self) -> bool:
        """Empty the shared cache; ``False`` when the store fails.

        This clears the whole cache at this location and options, whatever the key prefix:
        L1, and in L2 every key under the ``l2_prefix`` option (Redis), the whole server
        (memcached runs ``flush_all``) or the whole table (SQLite). Give apps that must be
        cleared separately their own ``l2_prefix`` or location.
        """
        try:
            self.cache.clear()
        except BackendError as exc:
            self._log_failure("clear", "*", exc)
            return False
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Add ``delta`` to the integer under ``key`` and return the new value.

        A missing key is taken as 0: it is set to ``delta`` with no expiry, as by cachelib's
        ``RedisCache`` (``INCRBY``). An existing value keeps its expiry. ``None`` when the
        store fails.

        :raises TypeError: the stored value is not an integer.
        """
        name = self._key(key)
        try:
            for _ in range(3):
                try:
                    return self.cache.incr(name, delta)
                except KeyError:
                    # Missing: create it, unless another caller did so meanwhile.
                    if self.cache.add(name, delta, None):
                        return delta
            return self.cache.incr(name, delta)
        except BackendError as exc:
            self._log_failure("inc", name, exc)
            return None
        except KeyError as exc:
            # The key kept vanishing between the add and the incr (a concurrent delete).
            self._log_failure("inc", name, exc)
            return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        """Subtract ``delta``; see :meth:`inc` (a missing key becomes ``-delta``)."""
        return self.inc(key, -delta)

    def __repr__(self) -> str:
        return f"<flask TieredCache key_prefix={self.key_prefix!r} cache={self.cache!r}>"
