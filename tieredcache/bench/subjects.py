"""The subjects of the benchmarks: tieredcache and its peers behind one small interface.

Each :class:`Subject` exposes the fastest callables its implementation offers, so that a
timed loop measures the implementation and not an adapter. :data:`SUBJECTS` names every
subject with the packages it needs; a subject whose package is not installed is reported
as skipped (see :func:`missing_reason`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pickle
import secrets
import threading
import time
import typing as t

from tieredcache.bench.config import TTL
from tieredcache.bench.config import Env
from tieredcache.entry import Entry

__all__ = [
    "DISTRIBUTIONS",
    "SUBJECTS",
    "WORKER_SUBJECTS",
    "Subject",
    "TieredSubject",
    "configure_django",
    "delete_prefix",
    "missing_packages",
    "missing_reason",
]

_MISS = object()
_PICKLE = pickle.HIGHEST_PROTOCOL
_PRELOAD_BATCH = 500


class Subject:
    """One implementation under test.

    ``get``, ``set`` and the ``_many`` forms are the fastest callables the implementation
    offers (often its own bound methods), so that a timed loop measures the implementation
    and not an adapter. ``forget_near`` drops the in-process copy of a key (tiers only), so
    that the next read goes to the shared store.
    """

    #: Has an in-process copy that ``forget_near`` drops.
    near = False
    #: Has a shared store (a read can miss the process and still hit).
    remote = True

    def __init__(self, env: Env, prefix: str) -> None:
        self.env = env
        self.prefix = prefix
        self.get: t.Callable[[str], t.Any] = _unsupported
        self.set: t.Callable[[str, t.Any], t.Any] = _unsupported
        self.get_many: t.Callable[[list[str]], t.Any] = _unsupported
        self.set_many: t.Callable[[dict[str, t.Any]], t.Any] = _unsupported
        #: Stores the value of a read that missed (the worker-process benchmark): a plain
        #: ``set`` unless the subject has a fill (set-if-absent, as ``get_or_set`` stores).
        self.fill: t.Callable[[str, t.Any], t.Any] | None = None

    def forget_near(self, key: str) -> None:
        """Drop the in-process copy of ``key``."""

    def preload(self, mapping: dict[str, t.Any]) -> None:
        """Store every item of ``mapping`` (untimed set-up), in batches where possible."""
        if self.set_many is _unsupported:
            for key, value in mapping.items():
                self.set(key, value)
            return
        items = list(mapping.items())
        for i in range(0, len(items), _PRELOAD_BATCH):
            self.set_many(dict(items[i : i + _PRELOAD_BATCH]))

    def l1_counts(self) -> tuple[int, int] | None:
        """``(L1 hits, reads)`` so far, or ``None`` for a subject without an L1."""
        return None

    def settle(self) -> None:
        """Wait for background work (race losers) to finish."""

    def close(self) -> None:
        """Release connections and threads."""


def _unsupported(*args: t.Any) -> t.Any:
    raise NotImplementedError


def _dumps(value: t.Any) -> bytes:
    return pickle.dumps(value, _PICKLE)


class TieredSubject(Subject):
    """:class:`~tieredcache.TieredCache` of a ``MemoryBackend`` over Redis (or memcached),
    with the named write policy, and with ``backplane=True`` a ``RedisBackplane`` on a
    channel of its own prefix (the worker-process benchmark)."""

    near = True

    def __init__(
        self,
        env: Env,
        prefix: str,
        *,
        write: str = "sequential",
        l2: str = "redis",
        l1_maxsize: int = 4096,
        l1_max_bytes: int | None = None,
        backplane: bool = False,
    ) -> None:
        super().__init__(env, prefix)
        from tieredcache.backends.memory import MemoryBackend
        from tieredcache.policies.write import LoserPolicy
        from tieredcache.policies.write import OptimisticParallelWrite
        from tieredcache.policies.write import RaceWrite
        from tieredcache.policies.write import SequentialWrite
        from tieredcache.tiered import TieredCache

        store: t.Any
        if l2 == "redis":
            from tieredcache.backends.redis import RedisBackend

            store = RedisBackend.from_url(env.redis_url, prefix=prefix)
        else:
            from tieredcache.backends.memcached import MemcachedBackend

            store = MemcachedBackend([env.memcached], prefix=prefix)
        policies: dict[str, t.Callable[[], t.Any]] = {
            "sequential": SequentialWrite,
            "parallel": OptimisticParallelWrite,
            "race": lambda: RaceWrite(LoserPolicy.OFFLOAD),
            "race-drop": lambda: RaceWrite(LoserPolicy.DROP),
        }
        self.l1 = MemoryBackend(l1_maxsize, max_bytes=l1_max_bytes)
        plane: t.Any = None
        if backplane:
            from tieredcache.redis.backplane import RedisBackplane

            plane = RedisBackplane.from_url(env.redis_url, channel=prefix + "invalidate")
        self.cache = cache = TieredCache(self.l1, store, write=policies[write](), backplane=plane)
        self.get = cache.get
        self.set = lambda key, value: cache.set(key, value, TTL)
        self.get_many = cache.get_many
        self.set_many = lambda mapping: cache.set_many(mapping, TTL)
        make_entry, fill_entry = cache.make_entry, cache.fill_entry
        self.fill = lambda key, value: fill_entry(key, t.cast(Entry, make_entry(value, TTL)))

    def forget_near(self, key: str) -> None:
        self.l1.delete(key)

    def l1_counts(self) -> tuple[int, int] | None:
        return _tiered_counts(self.cache)

    def settle(self) -> None:
        self.cache.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cache.clear()
        self.cache.close()


class _RedisPy(Subject):
    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        import redis

        self.client = client = t.cast(t.Any, redis.Redis.from_url(env.redis_url))
        loads = pickle.loads
        raw_get, raw_set, mget = client.get, client.set, client.mget
        px = TTL * 1000

        def get(key: str) -> t.Any:
            data = raw_get(prefix + key)
            return None if data is None else loads(data)

        def get_many(keys: list[str]) -> dict[str, t.Any]:
            values = mget([prefix + key for key in keys])
            return {k: loads(v) for k, v in zip(keys, values) if v is not None}

        def set_many(mapping: dict[str, t.Any]) -> None:
            with client.pipeline(transaction=False) as pipe:
                for key, value in mapping.items():
                    pipe.set(prefix + key, _dumps(value), px=px)
                pipe.execute()

        self.get = get
        self.set = lambda key, value: raw_set(prefix + key, _dumps(value), px=px)
        self.get_many = get_many
        self.set_many = set_many

    def close(self) -> None:
        delete_prefix(self.client, self.prefix)
        self.client.close()


class _Pymemcache(Subject):
    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        from pymemcache.client.base import Client

        self.client = client = Client(env.memcached, connect_timeout=2, timeout=5)
        loads = pickle.loads

        def get(key: str) -> t.Any:
            data = client.get(prefix + key)
            return None if data is None else loads(data)

        def get_many(keys: list[str]) -> dict[str, t.Any]:
            found = client.get_many([prefix + key for key in keys])
            cut = len(prefix)
            return {k[cut:]: loads(v) for k, v in found.items()}

        self.get = get
        self.set = lambda key, value: client.set(prefix + key, _dumps(value), expire=TTL)
        self.get_many = get_many
        self.set_many = lambda mapping: client.set_many(
            {prefix + k: _dumps(v) for k, v in mapping.items()}, expire=TTL
        )

    def close(self) -> None:
        self.client.close()


class _CachetoolsLocal(Subject):
    """A ``cachetools.TTLCache`` behind one ``threading.Lock``: an in-process cache alone."""

    remote = False

    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        import cachetools

        store: t.Any = cachetools.TTLCache(100_000, TTL)
        lock = threading.Lock()

        def get(key: str) -> t.Any:
            with lock:
                return store.get(key)

        def set_(key: str, value: t.Any) -> None:
            with lock:
                store[key] = value

        self.get = get
        self.set = set_


class _DictLocal(Subject):
    """A plain dict read inside a function: the floor of any in-process read."""

    remote = False

    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        store: dict[str, t.Any] = {}

        def get(key: str) -> t.Any:
            return store.get(key)

        self.get = get
        self.set = store.__setitem__


class _CachetoolsTier(Subject):
    """A hand-written tier: a ``cachetools.TTLCache`` behind a lock in front of redis-py."""

    near = True

    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        import cachetools
        import redis

        self.client = client = t.cast(t.Any, redis.Redis.from_url(env.redis_url))
        self.store: t.Any = cachetools.TTLCache(4096, TTL)
        store = self.store
        self.lock = lock = threading.Lock()
        loads = pickle.loads
        raw_get, raw_set, mget = client.get, client.set, client.mget
        px = TTL * 1000

        def get(key: str) -> t.Any:
            with lock:
                value = store.get(key, _MISS)
            if value is not _MISS:
                return value
            data = raw_get(prefix + key)
            if data is None:
                return None
            value = loads(data)
            with lock:
                store[key] = value
            return value

        def set_(key: str, value: t.Any) -> None:
            raw_set(prefix + key, _dumps(value), px=px)
            with lock:
                store[key] = value

        def get_many(keys: list[str]) -> dict[str, t.Any]:
            found = {}
            with lock:
                for key in keys:
                    value = store.get(key, _MISS)
                    if value is not _MISS:
                        found[key] = value
            missing = [key for key in keys if key not in found]
            if missing:
                fetched = {
                    k: loads(v)
                    for k, v in zip(missing, mget([prefix + k for k in missing]))
                    if v is not None
                }
                with lock:
                    store.update(fetched)
                found.update(fetched)
            return found

        def set_many(mapping: dict[str, t.Any]) -> None:
            with client.pipeline(transaction=False) as pipe:
                for key, value in mapping.items():
                    pipe.set(prefix + key, _dumps(value), px=px)
                pipe.execute()
            with lock:
                store.update(mapping)

        self.get, self.set, self.get_many, self.set_many = get, set_, get_many, set_many

    def forget_near(self, key: str) -> None:
        with self.lock:
            self.store.pop(key, None)

    def close(self) -> None:
        delete_prefix(self.client, self.prefix)
        self.client.close()


class _DictTier(Subject):
    """A hand-written tier: a dict of ``(value, expires_at)`` read without a lock, in front
    of redis-py; writes evict the oldest insertion past 4096 entries."""

    near = True

    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        import redis

        self.client = client = t.cast(t.Any, redis.Redis.from_url(env.redis_url))
        self.store: dict[str, tuple[t.Any, float]] = {}
        store = self.store
        store_get = store.get
        lock = threading.Lock()
        loads = pickle.loads
        clock = time.time
        raw_get, raw_set = client.get, client.set
        px = TTL * 1000

        def remember(key: str, value: t.Any) -> None:
            with lock:
                store[key] = (value, clock() + TTL)
                if len(store) > 4096:
                    store.pop(next(iter(store)), None)

        def get(key: str) -> t.Any:
            held = store_get(key)
            if held is not None and held[1] > clock():
                return held[0]
            data = raw_get(prefix + key)
            if data is None:
                return None
            value = loads(data)
            remember(key, value)
            return value

        def set_(key: str, value: t.Any) -> None:
            raw_set(prefix + key, _dumps(value), px=px)
            remember(key, value)

        self.get, self.set = get, set_

    def forget_near(self, key: str) -> None:
        self.store.pop(key, None)

    def close(self) -> None:
        delete_prefix(self.client, self.prefix)
        self.client.close()


class _Django(Subject):
    """A Django cache backend, made directly from its class and parameters."""

    backend = ""
    location = "redis"

    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        configure_django()
        module_name, _, class_name = self.backend.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        location = env.redis_url if self.location == "redis" else self.location
        params = {"TIMEOUT": TTL, "KEY_PREFIX": prefix, "OPTIONS": self.options()}
        self.cache = cache = cls(location, params)
        self.get = cache.get
        self.set = lambda key, value: cache.set(key, value, TTL)
        self.get_many = cache.get_many
        self.set_many = lambda mapping: cache.set_many(mapping, TTL)

    def options(self) -> dict[str, t.Any]:
        return {}

    def close(self) -> None:
        if self.location == "redis":
            import redis

            client = redis.Redis.from_url(self.env.redis_url)
            delete_prefix(client, self.prefix)
            client.close()
        else:
            self.cache.clear()
        self.cache.close()


class _DjangoTiered(_Django):
    backend = "tieredcache.contrib.django.TieredCache"
    near = True
    backplane = False

    def options(self) -> dict[str, t.Any]:
        # An L1 that holds every key of the Django rows, so that an L1-hit row hits L1.
        options = {"l1_maxsize": 2 * self.env.config.wide_keys, "l2_prefix": self.prefix}
        if self.backplane:
            options.update(backplane=True, backplane_channel=self.prefix + "invalidate")
        return options

    def forget_near(self, key: str) -> None:
        self.cache.tiered.l1.delete(self.cache.make_key(key))

    def l1_counts(self) -> tuple[int, int] | None:
        return _tiered_counts(self.cache.tiered)

    def close(self) -> None:
        self.cache.tiered.clear()
        self.cache.tiered.close()


class _DjangoTieredBackplane(_DjangoTiered):
    backplane = True

    def __init__(self, env: Env, prefix: str) -> None:
        super().__init__(env, prefix)
        cache = self.cache
        # A read that missed stores through get_or_set (set-if-absent, not announced).
        self.fill = lambda key, value: cache.get_or_set(key, value, TTL)

    def options(self) -> dict[str, t.Any]:
        # The same L1 size as the TieredSubject of the worker-process benchmark.
        return {**super().options(), "l1_maxsize": 4096}


def _tiered_counts(cache: t.Any) -> tuple[int, int]:
    figures = cache.stats()
    return figures["l1_hits"], figures["hits"] + figures["misses"]


class _DjangoLocMem(_Django):
    backend = "django.core.cache.backends.locmem.LocMemCache"
    location = "tieredcache-bench"
    remote = False

    def options(self) -> dict[str, t.Any]:
        # Django's default of 300 entries would cull most of the rows' keys.
        return {"MAX_ENTRIES": 2 * self.env.config.wide_keys}


class _DjangoRedis(_Django):
    backend = "django.core.cache.backends.redis.RedisCache"


class _DjangoRedisPackage(_Django):
    backend = "django_redis.cache.RedisCache"


def configure_django(secret_key: str | None = None) -> None:
    """Configure Django's settings (a secret key, no caches) unless already configured.

    :param secret_key: the ``SECRET_KEY`` (random by default); processes that share signed
        cache payloads must share it.
    """
    from django.conf import settings

    if not settings.configured:
        secret = secret_key if secret_key is not None else secrets.token_hex(16)
        settings.configure(SECRET_KEY=secret, USE_TZ=True, CACHES={})


def delete_prefix(client: t.Any, prefix: str) -> None:
    """Remove every Redis key under ``prefix`` (best effort: cleanup after a subject)."""
    with contextlib.suppress(Exception):
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])


#: Every subject by name: (factory, packages it needs).
SUBJECTS: dict[str, tuple[t.Callable[[Env, str], Subject], tuple[str, ...]]] = {
    "tieredcache": (TieredSubject, ("redis",)),
    "tieredcache OptimisticParallelWrite": (
        lambda env, prefix: TieredSubject(env, prefix, write="parallel"),
        ("redis",),
    ),
    "tieredcache RaceWrite(OFFLOAD)": (
        lambda env, prefix: TieredSubject(env, prefix, write="race"),
        ("redis",),
    ),
    "tieredcache RaceWrite(DROP)": (
        lambda env, prefix: TieredSubject(env, prefix, write="race-drop"),
        ("redis",),
    ),
    "tieredcache (memcached L2)": (
        lambda env, prefix: TieredSubject(env, prefix, l2="memcached"),
        ("pymemcache",),
    ),
    "redis-py": (_RedisPy, ("redis",)),
    "pymemcache": (_Pymemcache, ("pymemcache",)),
    "dict.get": (_DictLocal, ()),
    "cachetools+lock": (_CachetoolsLocal, ("cachetools",)),
    "cachetools tier": (_CachetoolsTier, ("cachetools", "redis")),
    "dict tier": (_DictTier, ("redis",)),
    "tieredcache Django": (_DjangoTiered, ("django",)),
    "Django LocMemCache": (_DjangoLocMem, ("django",)),
    "Django RedisCache": (_DjangoRedis, ("django", "redis")),
    "django-redis": (_DjangoRedisPackage, ("django", "django_redis")),
}


#: The subjects of the worker-process benchmark: the tiers have a ``RedisBackplane``.
WORKER_SUBJECTS: dict[str, tuple[t.Callable[[Env, str], Subject], tuple[str, ...]]] = {
    "tieredcache": (lambda env, prefix: TieredSubject(env, prefix, backplane=True), ("redis",)),
    "redis-py": SUBJECTS["redis-py"],
    "tieredcache Django": (_DjangoTieredBackplane, ("django",)),
    "django-redis": SUBJECTS["django-redis"],
}

#: The distribution to install for an importable module, where the two names differ.
DISTRIBUTIONS: dict[str, str] = {"django_redis": "django-redis"}


def missing_packages(packages: t.Iterable[str]) -> list[str]:
    """The modules of ``packages`` that cannot be imported."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


def missing_reason(packages: t.Iterable[str]) -> str | None:
    """Why a subject needing ``packages`` cannot run (``"django-redis not installed"``),
    or ``None`` when every package is there."""
    missing = missing_packages(packages)
    if not missing:
        return None
    return ", ".join(DISTRIBUTIONS.get(name, name) for name in missing) + " not installed"
