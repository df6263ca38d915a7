"""
Options
=======

:class:`CacheOptions` holds every option of a configured cache (see
:func:`tieredcache.config.build_cache`) and its default: the one place defaults live.
Frameworks give options as a mapping (:meth:`CacheOptions.from_mapping`): names are
case-insensitive, so Django's upper-case ``OPTIONS`` work, and django-redis's names are
accepted too (see ``docs/integrations/django-redis-migration.rst``).
"""

from __future__ import annotations

import dataclasses
import typing as t

from tieredcache.compressors import CODECS
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
from tieredcache.serializers import JSONSerializer
from tieredcache.serializers import PickleSerializer
from tieredcache.serializers import Serializer

__all__ = [
    "DEFAULT_COMPRESS_THRESHOLD",
    "OPTIONS",
    "READ_POLICIES",
    "REFILLS",
    "SERIALIZERS",
    "WRITE_POLICIES",
    "CacheOptions",
]

#: The payload size from which a ``compressor`` compresses when no ``compress_threshold``
#: is given.
DEFAULT_COMPRESS_THRESHOLD = 1024

#: Read policies by option value.
READ_POLICIES: dict[str, t.Callable[[], ReadPolicy]] = {
    "sequential": SequentialRead,
    "race": RaceRead,
    "parallel": ParallelRead,
}
#: Write policies by option value.
WRITE_POLICIES: dict[str, t.Callable[[], WritePolicy]] = {
    "sequential": SequentialWrite,
    "parallel": OptimisticParallelWrite,
    "race": lambda: RaceWrite(LoserPolicy.OFFLOAD),
    "race-drop": lambda: RaceWrite(LoserPolicy.DROP),
}
#: Refill modes by option value.
REFILLS = {"always": Refill.ALWAYS, "never": Refill.NEVER}
_L1_POLICIES = ("lru", "lfu", "fifo")
#: Serializers by option value.
SERIALIZERS: dict[str, t.Callable[[], Serializer]] = {
    "pickle": PickleSerializer,
    "json": JSONSerializer,
}

# django-redis's names for what tieredcache has.
_DJANGO_REDIS = "django_redis."
_DJANGO_REDIS_CLIENTS = (
    "django_redis.client.DefaultClient",
    "django_redis.client.default.DefaultClient",
)
_DJANGO_REDIS_SERIALIZERS = {
    "django_redis.serializers.pickle.PickleSerializer": "pickle",
    "django_redis.serializers.json.JSONSerializer": "json",
}
_DJANGO_REDIS_COMPRESSORS = {
    "django_redis.compressors.identity.IdentityCompressor": None,
    "django_redis.compressors.zlib.ZlibCompressor": "zlib",
    "django_redis.compressors.gzip.GzipCompressor": "gzip",
    "django_redis.compressors.lzma.LzmaCompressor": "lzma",
    "django_redis.compressors.lz4.Lz4Compressor": "lz4",
    "django_redis.compressors.zstd.ZStdCompressor": "zstd",
}
# Mapping names that mean a field of another name, and names accepted and ignored.
_ALIASES = {"max_entries": "l1_maxsize", "socket_connect_timeout": "connect_timeout"}
_IGNORED = ("client_class", "cull_frequency")


@dataclasses.dataclass(frozen=True)
class CacheOptions:
    """Every option of a configured cache, validated, with its default.

    Frozen and hashable, so that equal options share one cache. Values are checked when
    the object is made; names given as strings are kept lower-cased and built later.

    :param l1_maxsize: the most entries L1 holds (Django's ``MAX_ENTRIES``).
    :param l1_max_bytes: a bound on the bytes L1 holds (``None``: none).
    :param l1_ttl: the longest an L1 copy of an L2 value lives (``None``: as long as the
        value does).
    :param l1_policy: L1's eviction: ``"lru"``, ``"lfu"`` or ``"fifo"``.
    :param read: ``"sequential"``, ``"race"``, ``"parallel"`` or a ReadPolicy.
    :param write: ``"sequential"``, ``"parallel"``, ``"race"``, ``"race-drop"`` or a
        WritePolicy.
    :param refill: ``"always"``, ``"never"`` or a Refill.
    :param serializer: ``"pickle"``, ``"json"``, the dotted path of a Serializer class or
        instance, or a Serializer.
    :param sign: sign L2 payloads (``None``: when a secret key is given).
    :param compressor: one of :data:`~tieredcache.compressors.CODECS`; ``None`` compresses
        with zlib when ``compress_threshold`` is given, and not at all otherwise.
    :param compress_threshold: compress payloads from this many bytes on
        (:data:`DEFAULT_COMPRESS_THRESHOLD` when only ``compressor`` is given).
    :param offload_workers: a thread pool of this size for background writes.
    :param socket_timeout: seconds an L2 command may wait for its reply.
    :param connect_timeout: seconds an L2 connection attempt may take.
    :param l2_prefix: prepended to every L2 key (Redis, memcached).
    :param fail_open: keep serving from L1 (and queue writes) while L2 is unavailable.
    :param breaker_failures: consecutive L2 failures that open the breaker (``None``: no
        breaker).
    :param breaker_reset_after: seconds an open breaker waits before trying L2 again.
    :param backplane: ``True`` (the Redis location), ``False`` or a Redis URL.
    :param backplane_channel: the backplane's pub/sub channel.
    :param jitter: a fraction of each TTL added at random, in ``[0, 1)``.
    :param password: the Redis password, when the URL holds none.
    :param connection_pool_kwargs: more keyword arguments for the Redis client and its
        connection pool (``max_connections``, ``health_check_interval``...), as
        ``(name, value)`` pairs.
    :raises ConfigurationError: a value is invalid; the message names the option.
    """

    l1_maxsize: int = 10_000
    l1_max_bytes: int | None = None
    l1_ttl: float | None = None
    l1_policy: str = "lru"
    read: t.Any = "sequential"
    write: t.Any = "sequential"
    refill: t.Any = "always"
    serializer: t.Any = "pickle"
    sign: bool | None = None
    compressor: str | None = None
    compress_threshold: int | None = None
    offload_workers: int | None = None
    socket_timeout: float | None = None
    connect_timeout: float | None = None
    l2_prefix: str = ""
    fail_open: bool = False
    breaker_failures: int | None = 5
    breaker_reset_after: float = 5.0
    backplane: t.Any = False
    backplane_channel: str = "tieredcache:invalidate"
    jitter: float = 0.0
    password: str | None = None
    connection_pool_kwargs: tuple[tuple[str, t.Any], ...] = ()

    def __post_init__(self) -> None:
        fix = object.__setattr__
        _check_int(self.l1_maxsize, "l1_maxsize", minimum=1)
        if self.l1_max_bytes is not None:
            _check_int(self.l1_max_bytes, "l1_max_bytes", minimum=1)
        fix(self, "l1_ttl", _check_seconds(self.l1_ttl, "l1_ttl"))
        policy = self.l1_policy
        if not isinstance(policy, str) or policy.lower() not in _L1_POLICIES:
            raise ConfigurationError(
                f"l1_policy must be one of {', '.join(map(repr, _L1_POLICIES))}, not {policy!r}"
            )
        fix(self, "l1_policy", policy.lower())
        fix(self, "read", _choice(self.read, "read", READ_POLICIES, ReadPolicy))
        fix(self, "write", _choice(self.write, "write", WRITE_POLICIES, WritePolicy))
        fix(self, "refill", _choice(self.refill, "refill", REFILLS, Refill))
        fix(self, "serializer", _check_serializer(self.serializer))
        if self.sign is not None and not isinstance(self.sign, bool):
            raise ConfigurationError(f"sign must be True or False, not {self.sign!r}")
        fix(self, "compressor", _check_compressor(self.compressor))
        if self.compress_threshold is not None:
            _check_int(self.compress_threshold, "compress_threshold", minimum=0)
        if self.offload_workers is not None:
            _check_int(self.offload_workers, "offload_workers", minimum=1)
        fix(self, "socket_timeout", _check_seconds(self.socket_timeout, "socket_timeout"))
        fix(self, "connect_timeout", _check_seconds(self.connect_timeout, "connect_timeout"))
        if not isinstance(self.l2_prefix, str):
            raise ConfigurationError(f"l2_prefix must be a str, not {self.l2_prefix!r}")
        if not isinstance(self.fail_open, bool):
            raise ConfigurationError(f"fail_open must be True or False, not {self.fail_open!r}")
        if self.breaker_failures is not None:
            _check_int(
                self.breaker_failures, "breaker_failures (None turns the breaker off)", minimum=1
            )
        reset_after = _check_seconds(self.breaker_reset_after, "breaker_reset_after")
        fix(self, "breaker_reset_after", 5.0 if reset_after is None else reset_after)
        if not isinstance(self.backplane, (bool, str)):
            raise ConfigurationError(
                f"backplane must be True (use the Redis location), False, or a Redis URL, not "
                f"{self.backplane!r}"
            )
        channel = self.backplane_channel
        if not isinstance(channel, str) or not channel:
            raise ConfigurationError(f"backplane_channel must be a non-empty str, not {channel!r}")
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ConfigurationError(f"jitter must be a fraction in [0, 1), not {jitter!r}")
        fix(self, "jitter", float(jitter))
        if self.password is not None and not isinstance(self.password, str):
            raise ConfigurationError("password must be a str or None")
        fix(self, "connection_pool_kwargs", _check_pool_kwargs(self.connection_pool_kwargs))

    @classmethod
    def from_mapping(cls, options: t.Any) -> CacheOptions:
        """The options a framework's mapping gives (``None``: every default).

        Names are case-insensitive. ``max_entries`` is ``l1_maxsize``;
        ``socket_connect_timeout`` is ``connect_timeout``; ``client_class`` may name
        django-redis's default client and ``cull_frequency`` is accepted and ignored (L1
        evicts one entry at a time); ``serializer`` and ``compressor`` may name
        django-redis's classes.

        :raises ConfigurationError: ``options`` is not a mapping, a name is unknown or given
            twice, or a value is invalid.
        """
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
            if key in _IGNORED:
                if key == "client_class":
                    _check_client_class(value)
                continue
            field = _ALIASES.get(key, key)
            if field not in OPTIONS:
                valid = [*OPTIONS, *_ALIASES, *_IGNORED]
                raise ConfigurationError(
                    f"unknown cache option {name!r}; the valid options are "
                    + ", ".join(n.upper() if name.isupper() else n for n in valid)
                )
            if field in given:
                raise ConfigurationError(
                    f"the option {field!r} is given twice (names ignore case; "
                    f"{', '.join(a for a, f in _ALIASES.items() if f == field)} is another "
                    f"name of it)"
                    if field in _ALIASES.values()
                    else f"the option {field!r} is given twice (names ignore case)"
                )
            if field == "connection_pool_kwargs" and isinstance(value, t.Mapping):
                value = tuple(sorted(value.items()))
            given[field] = value
        return cls(**given)

    def replace(self, **changes: t.Any) -> CacheOptions:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


#: Every option and its default, from :class:`CacheOptions`.
OPTIONS: t.Mapping[str, t.Any] = {
    field.name: field.default for field in dataclasses.fields(CacheOptions)
}


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
        if value in _DJANGO_REDIS_SERIALIZERS:
            return _DJANGO_REDIS_SERIALIZERS[value]
        if value.startswith(_DJANGO_REDIS):
            raise ConfigurationError(
                f"the serializer {value!r} has no tieredcache equivalent; use 'pickle', "
                "'json' (django-redis's PickleSerializer and JSONSerializer are accepted), "
                "or the dotted path of a tieredcache Serializer"
            )
        if value.lower() in SERIALIZERS:
            return value.lower()
        if "." in value:
            return value
    raise ConfigurationError(
        f"serializer must be 'pickle', 'json', the dotted path of a Serializer class or "
        f"instance, or a Serializer instance, not {value!r}"
    )


def _check_compressor(value: t.Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value in _DJANGO_REDIS_COMPRESSORS:
            return _DJANGO_REDIS_COMPRESSORS[value]
        if value.lower() in CODECS:
            return value.lower()
    raise ConfigurationError(
        f"compressor must be one of {', '.join(map(repr, CODECS))} or one of django-redis's "
        f"compressors ({', '.join(_DJANGO_REDIS_COMPRESSORS)}), not {value!r}"
    )


def _check_client_class(value: t.Any) -> None:
    if value not in _DJANGO_REDIS_CLIENTS:
        raise ConfigurationError(
            f"CLIENT_CLASS {value!r} is not supported: tieredcache is its own client. "
            "django_redis.client.DefaultClient is accepted; for sharding, herd protection or "
            "Sentinel use a redis+cluster:// or redis+sentinel:// location (stampedes are "
            "prevented by get_or_set's single flight); remove CLIENT_CLASS otherwise"
        )


def _check_pool_kwargs(value: t.Any) -> tuple[tuple[str, t.Any], ...]:
    if isinstance(value, t.Mapping):
        value = tuple(sorted(value.items()))
    if not isinstance(value, tuple) or not all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) for pair in value
    ):
        raise ConfigurationError(
            f"connection_pool_kwargs must be a mapping of keyword arguments, not {value!r}"
        )
    for name, item in value:
        try:
            hash(item)
        except TypeError:
            raise ConfigurationError(
                f"connection_pool_kwargs[{name!r}] must be hashable (a number, str, tuple...)"
            ) from None
        if name == "decode_responses" and item:
            raise ConfigurationError("connection_pool_kwargs cannot set decode_responses")
    return t.cast("tuple[tuple[str, t.Any], ...]", value)
