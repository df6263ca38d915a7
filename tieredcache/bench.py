"""
Benchmarks
==========

``python -m tieredcache bench`` runs the same workloads against tieredcache and against its
peers, in one process and one run, and reports each row's latency and throughput and its
ratio to a peer measured alongside it:

- a plain dict read inside a function, and a ``cachetools.TTLCache`` behind a
  ``threading.Lock`` (an in-process cache alone);
- raw ``redis-py`` and raw ``pymemcache`` (values pickled by the caller);
- two hand-written tiers in front of redis-py: a ``cachetools.TTLCache`` behind a lock, and
  a plain dict of ``(value, expires_at)`` read without a lock;
- Django's ``LocMemCache`` and ``RedisCache``, and ``django-redis``.

A peer that is not installed is reported as such and skipped; only the core dependencies
and the ``redis-server`` and ``memcached`` binaries are needed (the run starts its own
servers on loopback unless given addresses).

Absolute times depend on the machine and on whatever else it runs; ratios measured in the
same process, with the subjects of a workload taking turns round after round (in
alternating order), are what carry from one machine to another. Each timed sample is one
operation, or for operations under a few microseconds the mean of a small batch, timed
with :func:`time.perf_counter_ns`; the garbage collector is paused while a round runs.

Results are written as JSON and Markdown (and a PNG plot when matplotlib is installed);
:data:`TARGETS` lists the ratios the library promises and each report says which hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import json
import os
import pickle
import platform
import random
import secrets
import sys
import threading
import time
import tracemalloc
import typing as t

__all__ = ["TARGETS", "WORKLOADS", "BenchConfig", "Report", "run"]

TTL = 300
_MISS = object()
_PICKLE = pickle.HIGHEST_PROTOCOL


# == configuration ============================================================================


@dataclasses.dataclass
class BenchConfig:
    """What to run and where.

    :param quick: a short run (under a minute): fewer rounds and operations.
    :param sizes: value sizes in bytes.
    :param rounds: alternating rounds per workload (each subject times one batch per round).
    :param ops: timed operations per subject per round (fast operations run more).
    :param threads: thread counts of the threaded workloads.
    :param round_ms: how long a round of a threaded workload lasts, in milliseconds.
    :param only: run only the workloads whose id or group starts with one of these.
    :param redis_url: an existing Redis to use (``None``: start one on loopback).
    :param memcached: an existing memcached ``(host, port)`` (``None``: start one).
    :param progress: draw a progress bar on stderr.
    :param keep_awake: run a lowest-priority busy loop in a child process for the whole
        run, so that idle virtual CPUs do not have to be woken by the hypervisor for every
        round trip (on such machines a loopback round trip otherwise measures the wake-up).
    :param keys: how many keys the mixed workloads spread over (the hot set of the
        single-key workloads is a fifth of it, at most 1000).
    :param memory_bytes: the L1 ``max_bytes`` of the memory workload (``None``: 256 KiB
        for small values, 1 MiB for large ones).
    """

    quick: bool = False
    sizes: tuple[int, ...] = (64, 4096)
    rounds: int = 15
    ops: int = 300
    threads: tuple[int, ...] = (1, 4, 16)
    round_ms: int = 100
    only: tuple[str, ...] = ()
    redis_url: str | None = None
    memcached: tuple[str, int] | None = None
    progress: bool = True
    keep_awake: bool = False
    keys: int = 5000
    memory_bytes: int | None = None
    seed: int = 20240611

    @classmethod
    def quick_run(cls, **changes: t.Any) -> BenchConfig:
        """The settings of ``--quick``."""
        return cls(**{"quick": True, "rounds": 5, "ops": 80, "round_ms": 40, **changes})


# == subjects: tieredcache and its peers behind one small interface ===========================


class PeerMissing(Exception):
    """A peer's package is not installed; its rows say so."""


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

    def __init__(self, env: _Env, prefix: str) -> None:
        self.env = env
        self.prefix = prefix
        self.get: t.Callable[[str], t.Any] = _unsupported
        self.set: t.Callable[[str, t.Any], t.Any] = _unsupported
        self.get_many: t.Callable[[list[str]], t.Any] = _unsupported
        self.set_many: t.Callable[[dict[str, t.Any]], t.Any] = _unsupported

    def forget_near(self, key: str) -> None:
        """Drop the in-process copy of ``key``."""

    def settle(self) -> None:
        """Wait for background work (race losers) to finish."""

    def close(self) -> None:
        """Release connections and threads."""


def _unsupported(*args: t.Any) -> t.Any:
    raise NotImplementedError


def _dumps(value: t.Any) -> bytes:
    return pickle.dumps(value, _PICKLE)


class _Tiered(Subject):
    near = True

    def __init__(
        self,
        env: _Env,
        prefix: str,
        *,
        write: str = "sequential",
        l2: str = "redis",
        l1_maxsize: int = 4096,
        l1_max_bytes: int | None = None,
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
        self.cache = cache = TieredCache(self.l1, store, write=policies[write]())
        self.get = cache.get
        self.set = lambda key, value: cache.set(key, value, TTL)
        self.get_many = cache.get_many
        self.set_many = lambda mapping: cache.set_many(mapping, TTL)

    def forget_near(self, key: str) -> None:
        self.l1.delete(key)

    def settle(self) -> None:
        self.cache.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cache.clear()
        self.cache.close()


class _RedisPy(Subject):
    def __init__(self, env: _Env, prefix: str) -> None:
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
        _delete_prefix(self.client, self.prefix)
        self.client.close()


class _Pymemcache(Subject):
    def __init__(self, env: _Env, prefix: str) -> None:
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

    def __init__(self, env: _Env, prefix: str) -> None:
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

    def __init__(self, env: _Env, prefix: str) -> None:
        super().__init__(env, prefix)
        store: dict[str, t.Any] = {}

        def get(key: str) -> t.Any:
            return store.get(key)

        self.get = get
        self.set = store.__setitem__


class _CachetoolsTier(Subject):
    """A hand-written tier: a ``cachetools.TTLCache`` behind a lock in front of redis-py."""

    near = True

    def __init__(self, env: _Env, prefix: str) -> None:
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
        _delete_prefix(self.client, self.prefix)
        self.client.close()


class _DictTier(Subject):
    """A hand-written tier: a dict of ``(value, expires_at)`` read without a lock, in front
    of redis-py; writes evict the oldest insertion past 4096 entries."""

    near = True

    def __init__(self, env: _Env, prefix: str) -> None:
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
        _delete_prefix(self.client, self.prefix)
        self.client.close()


class _Django(Subject):
    """A Django cache backend, made directly from its class and parameters."""

    backend = ""
    location = "redis"

    def __init__(self, env: _Env, prefix: str) -> None:
        super().__init__(env, prefix)
        _configure_django()
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
            _delete_prefix(client, self.prefix)
            client.close()
        else:
            self.cache.clear()
        self.cache.close()


class _DjangoTiered(_Django):
    backend = "tieredcache.contrib.django.TieredCache"
    near = True

    def options(self) -> dict[str, t.Any]:
        return {"l1_maxsize": 4096, "l2_prefix": self.prefix}

    def forget_near(self, key: str) -> None:
        self.cache.tiered.l1.delete(self.cache.make_key(key))

    def close(self) -> None:
        self.cache.tiered.clear()
        self.cache.tiered.close()


class _DjangoLocMem(_Django):
    backend = "django.core.cache.backends.locmem.LocMemCache"
    location = "tieredcache-bench"
    remote = False


class _DjangoRedis(_Django):
    backend = "django.core.cache.backends.redis.RedisCache"


class _DjangoRedisPackage(_Django):
    backend = "django_redis.cache.RedisCache"


def _configure_django() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY=secrets.token_hex(16), USE_TZ=True, CACHES={})


def _delete_prefix(client: t.Any, prefix: str) -> None:
    with contextlib.suppress(Exception):
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])


#: Every subject by name: (factory, packages it needs).
SUBJECTS: dict[str, tuple[t.Callable[[_Env, str], Subject], tuple[str, ...]]] = {
    "tieredcache": (_Tiered, ("redis",)),
    "tieredcache OptimisticParallelWrite": (
        lambda env, prefix: _Tiered(env, prefix, write="parallel"),
        ("redis",),
    ),
    "tieredcache RaceWrite(OFFLOAD)": (
        lambda env, prefix: _Tiered(env, prefix, write="race"),
        ("redis",),
    ),
    "tieredcache RaceWrite(DROP)": (
        lambda env, prefix: _Tiered(env, prefix, write="race-drop"),
        ("redis",),
    ),
    "tieredcache (memcached L2)": (
        lambda env, prefix: _Tiered(env, prefix, l2="memcached"),
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


# == workloads ================================================================================


@dataclasses.dataclass(frozen=True)
class Workload:
    """A table of the report: subjects doing the same operations, one reference among them.

    ``kind`` is the operation pattern (see :func:`_case`); ``metric`` is ``"latency"``
    (the ratio is p50 over the reference's p50) or ``"throughput"`` (ops/s over the
    reference's ops/s, at the same thread count). ``reference="self"`` compares each
    subject with itself on one thread.
    """

    id: str
    title: str
    kind: str
    subjects: tuple[str, ...]
    reference: str
    metric: str = "latency"
    threaded: bool = False
    batch: int = 1
    ops_factor: float = 1.0


_TIERS = ("tieredcache", "cachetools tier", "dict tier")
_STORES = ("redis-py", "tieredcache (memcached L2)", "pymemcache")
_BATCHED = ("tieredcache", "cachetools tier", *_STORES)
_POLICIES = (
    "tieredcache",
    "tieredcache OptimisticParallelWrite",
    "tieredcache RaceWrite(OFFLOAD)",
    "tieredcache RaceWrite(DROP)",
)
_DJANGO = ("tieredcache Django", "Django LocMemCache", "Django RedisCache", "django-redis")
_L1 = ("tieredcache", "cachetools+lock", "dict.get")
_LATENCY, _THROUGHPUT = "latency", "throughput"

#: Every workload, in report order:
#: (id, title, kind, subjects, reference, metric, threaded, batch, ops_factor).
# fmt: off
WORKLOADS: tuple[Workload, ...] = tuple(
    Workload(*row)
    for row in (
        ("get-l1-hit", "get, L1 hit", "hit", (*_TIERS, *_L1[1:]), "cachetools tier",
         _LATENCY, False, 25, 20),
        ("get-l2-hit", "get, L2 hit (refills L1)", "l2-hit", (*_TIERS, *_STORES), "redis-py"),
        ("get-miss", "get, miss", "miss", (*_TIERS, *_STORES), "redis-py"),
        ("set", "set, by write policy", "set", (*_POLICIES, *_TIERS[1:], *_STORES), "redis-py"),
        ("get-many", "get_many of 100 keys, all in L2", "get-many", _BATCHED, "redis-py",
         _LATENCY, False, 1, 0.1),
        ("set-many", "set_many of 100 keys", "set-many", _BATCHED, "redis-py",
         _LATENCY, False, 1, 0.1),
        ("l1-threads", "get, L1 hit, threads (ops/s against the same subject on one thread)",
         "hit", _L1, "self", _THROUGHPUT, True, 25, 10),
        ("mix", "90% get / 10% set, Zipf keys, threads", "mix", (*_TIERS, "redis-py"),
         "cachetools tier", _THROUGHPUT, True, 1, 1),
        ("django-get", "Django: get, L1 hit (a cache hit for the others)", "hit", _DJANGO,
         "Django LocMemCache", _LATENCY, False, 10, 5),
        ("django-l2", "Django: get, L2 hit (refills L1; a Redis GET for the others)",
         "l2-hit", _DJANGO, "django-redis"),
        ("django-set", "Django: set", "set", _DJANGO, "django-redis"),
        ("django-mix", "Django: 90% get / 10% set, Zipf keys, threads", "mix", _DJANGO,
         "django-redis", _THROUGHPUT, True, 1, 1),
    )
)
# fmt: on


@dataclasses.dataclass(frozen=True)
class Target:
    """A promised ratio: ``row(numerator) / row(denominator)`` compared with ``bound``.

    ``measure`` is ``"p50"`` (a latency ratio), ``"ops"`` (a throughput ratio, the
    numerator on ``threads`` threads, the denominator on one) or ``"memory"`` (measured
    bytes over ``max_bytes``).
    """

    id: str
    text: str
    workload: str
    numerator: str
    denominator: str
    bound: float
    at_most: bool = True
    threads: int = 1
    measure: str = "p50"


#: The ratios the library promises (docs/benchmarks.rst explains each).
# fmt: off
TARGETS: tuple[Target, ...] = tuple(
    Target(*row)
    for row in (
        ("l1-vs-cachetools-tier", "L1 hit <= 0.3x the cachetools TTLCache + lock tier's L1 hit",
         "get-l1-hit", "tieredcache", "cachetools tier", 0.3),
        ("l1-vs-dict", "L1 hit <= 10x a plain dict.get in a function",
         "get-l1-hit", "tieredcache", "dict.get", 10.0),
        ("django-vs-locmem", "Django L1 hit <= 1.0x Django's LocMemCache get",
         "django-get", "tieredcache Django", "Django LocMemCache", 1.0),
        ("django-vs-django-redis", "Django L1 hit >= 15x faster than django-redis get",
         "django-get", "tieredcache Django", "django-redis", 1 / 15),
        ("l2-hit-vs-redis-py", "L2 hit (with refill) <= 0.8x redis-py GET + pickle.loads",
         "get-l2-hit", "tieredcache", "redis-py", 0.8),
        ("set-vs-redis-py", "SequentialWrite set <= 1.1x redis-py SET",
         "set", "tieredcache", "redis-py", 1.1),
        ("race-vs-sequential", "RaceWrite(OFFLOAD) set p50 <= 0.3x SequentialWrite set",
         "set", "tieredcache RaceWrite(OFFLOAD)", "tieredcache", 0.3),
        ("get-many-vs-mget", "get_many of 100 keys in L2 <= 1.2x one redis-py MGET",
         "get-many", "tieredcache", "redis-py", 1.2),
        ("threads-4", "L1-hit throughput on 4 threads >= 0.9x one thread",
         "l1-threads", "tieredcache", "tieredcache", 0.9, False, 4, "ops"),
        ("threads-16", "L1-hit throughput on 16 threads >= 0.9x one thread",
         "l1-threads", "tieredcache", "tieredcache", 0.9, False, 16, "ops"),
        ("memory-bound", "L1 with max_bytes stays within 10% of its bound under the mix",
         "memory", "tieredcache", "max_bytes", 1.1, True, 1, "memory"),
    )
)
# fmt: on


# == running ==================================================================================


@dataclasses.dataclass
class _Env:
    """Where the subjects connect, and the run's settings."""

    config: BenchConfig
    redis_url: str
    memcached: tuple[str, int]
    run_id: str
    rng: random.Random


@dataclasses.dataclass
class _Case:
    """A subject set up for one workload: what one timed operation does."""

    subject: Subject
    op: t.Callable[[t.Any], t.Any]
    args: list[t.Any]
    prepare: t.Callable[[t.Any], t.Any] | None = None
    batch: int = 1


@dataclasses.dataclass
class _Series:
    """The samples of one row."""

    samples: list[float] = dataclasses.field(default_factory=list)  # ns per op
    ops: int = 0
    wall_ns: int = 0


_WARM = 20  # untimed operations before each timed stretch
_MANY = 100


def _zipf_keys(rng: random.Random, count: int, universe: int, s: float = 1.1) -> list[int]:
    weights = [1.0 / (rank**s) for rank in range(1, universe + 1)]
    return rng.choices(range(universe), weights=weights, k=count)


def _value(size: int, i: int = 0) -> bytes:
    # A fresh object for every call (the L1 keeps objects as they are).
    return i.to_bytes(8, "little") + b"v" * max(0, size - 8)


def _case(workload: Workload, subject: Subject, env: _Env, size: int, ops: int) -> _Case:
    """Load ``subject`` with the keys ``workload`` reads and build its timed operation."""
    rng = random.Random(env.config.seed)
    value = _value(size)
    kind = workload.kind
    hot = max(1, min(1000, env.config.keys // 5))
    if kind in ("hit", "l2-hit"):
        keys = [f"k{i}" for i in range(hot)]
        for key in keys:
            subject.set(key, value)
        for key in keys:
            subject.get(key)  # an L1 that fills on read now holds it
        order = [keys[i] for i in rng.choices(range(hot), k=ops)]
        if kind == "hit":
            return _Case(subject, subject.get, order, batch=workload.batch)
        prepare = subject.forget_near if subject.near else None
        return _Case(subject, subject.get, order, prepare=prepare)
    if kind == "miss":
        return _Case(subject, subject.get, [f"absent{i}" for i in range(ops)])
    if kind == "set":
        keys = [f"w{i % hot}" for i in range(ops)]
        setter = subject.set
        return _Case(subject, lambda key: setter(key, value), keys)
    if kind == "get-many":
        batches = [[f"m{b}:{i}" for i in range(_MANY)] for b in range(10)]
        for batch in batches:
            subject.set_many(dict.fromkeys(batch, value))
        key_lists = [batches[i % len(batches)] for i in range(ops)]

        def forget(keys: list[str]) -> None:
            for key in keys:
                subject.forget_near(key)

        forget_all = forget if subject.near else None
        return _Case(subject, subject.get_many, key_lists, prepare=forget_all)
    if kind == "set-many":
        mappings = [{f"n{b}:{i}": value for i in range(_MANY)} for b in range(10)]
        return _Case(subject, subject.set_many, [mappings[i % 10] for i in range(ops)])
    if kind == "mix":
        universe = env.config.keys
        for i in range(universe):
            subject.set(f"z{i}", value)
        plan = [(rng.random() < 0.1, f"z{i}") for i in _zipf_keys(rng, ops * 4, universe)]
        getter, setter = subject.get, subject.set

        def step(item: tuple[bool, str]) -> None:
            if item[0]:
                setter(item[1], value)
            else:
                getter(item[1])

        return _Case(subject, step, plan)
    raise ValueError(f"unknown workload kind {kind!r}")


def _time_round(case: _Case, args: list[t.Any], series: _Series) -> None:
    op, prepare, batch, out = case.op, case.prepare, case.batch, series.samples
    clock = time.perf_counter_ns
    start = clock()
    if prepare is not None:
        for arg in args:
            prepare(arg)
            t0 = clock()
            op(arg)
            out.append(clock() - t0)
    elif batch == 1:
        for arg in args:
            t0 = clock()
            op(arg)
            out.append(clock() - t0)
    else:
        for i in range(0, len(args), batch):
            chunk = args[i : i + batch]
            t0 = clock()
            for arg in chunk:
                op(arg)
            out.append((clock() - t0) / len(chunk))
    series.wall_ns += clock() - start
    series.ops += len(args)


def _time_threaded(case: _Case, args: list[list[t.Any]], series: _Series, duration_ns: int) -> None:
    """Every thread runs its own operations, in timed batches, from one start until one
    deadline; the round's throughput is all their operations over the wall time.

    A round lasts many GIL switch intervals (5 ms), so what is measured is the threads
    sharing the interpreter, not their start-up.
    """
    threads = len(args)
    barrier = threading.Barrier(threads + 1)
    partial = [_Series() for _ in range(threads)]
    finished = [0] * threads
    deadline = [0]
    errors: list[BaseException] = []
    clock = time.perf_counter_ns

    def work(index: int) -> None:
        try:
            mine, out, op, batch = args[index], partial[index], case.op, case.batch
            _time_round(case, mine[:_WARM], _Series())  # this thread's first calls
            barrier.wait()
            end, i, count = deadline[0], 0, len(mine)
            while True:
                chunk = mine[i : i + batch]
                t0 = clock()
                for arg in chunk:
                    op(arg)
                t1 = clock()
                out.samples.append((t1 - t0) / len(chunk))
                out.ops += len(chunk)
                if t1 >= end:
                    break
                i = (i + batch) % count
            finished[index] = t1
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start = clock()
    deadline[0] = start + duration_ns
    barrier.wait()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    series.wall_ns += max(finished) - start
    for one in partial:
        series.samples.extend(one.samples)
        series.ops += one.ops


def _percentile(sorted_samples: list[float], fraction: float) -> float:
    if not sorted_samples:
        return float("nan")
    index = min(len(sorted_samples) - 1, round(fraction * (len(sorted_samples) - 1)))
    return sorted_samples[index]


class _Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {frac:4.0%} {elapsed:5.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r" + line[:100].ljust(100))
        elif self.done == self.total or self.done % max(1, self.total // 20) == 0:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _selected(config: BenchConfig) -> list[Workload]:
    if not config.only:
        return list(WORKLOADS)
    return [w for w in WORKLOADS if any(w.id.startswith(p) for p in config.only)]


def _missing(packages: t.Iterable[str]) -> list[str]:
    return [name for name in packages if importlib.util.find_spec(name) is None]


def _run_workload(
    workload: Workload, env: _Env, size: int, progress: _Progress
) -> list[dict[str, t.Any]]:
    config = env.config
    ops = max(workload.batch, int(config.ops * workload.ops_factor))
    thread_counts = config.threads if workload.threaded else (1,)
    rows: list[dict[str, t.Any]] = []
    cases: dict[str, _Case] = {}
    for name in workload.subjects:
        factory, packages = SUBJECTS[name]
        base = {"workload": workload.id, "size": size, "subject": name}
        missing = _missing(packages)
        if missing:
            for threads in thread_counts:
                detail = "not installed: " + ", ".join(missing)
                rows.append({**base, "threads": threads, "status": "missing", "detail": detail})
            continue
        prefix = f"tcb:{env.run_id}:{workload.id}:{size}:{len(cases)}:"
        try:
            subject = factory(env, prefix)
            cases[name] = _case(workload, subject, env, size, ops)
        except Exception as exc:
            for threads in thread_counts:
                detail = f"{type(exc).__name__}: {exc}"[:200]
                rows.append({**base, "threads": threads, "status": "error", "detail": detail})
    series = {(name, n): _Series() for name in cases for n in thread_counts}
    try:
        for case in cases.values():  # warm-up: connections, code paths, the L1
            _time_round(case, case.args[: max(case.batch, len(case.args) // 4)], _Series())
            case.subject.settle()
        names = list(cases)
        for round_no in range(config.rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            gc.collect()
            for name in order:
                case = cases[name]
                for threads in thread_counts:
                    gc.disable()
                    try:
                        if workload.threaded:
                            per_thread = _thread_args(case.args, ops, threads, round_no)
                            duration = config.round_ms * 1_000_000
                            _time_threaded(case, per_thread, series[name, threads], duration)
                        else:
                            args = _round_args(case.args, ops, round_no)
                            _time_round(case, args[:_WARM], _Series())  # caches warm again
                            _time_round(case, args, series[name, threads])
                    finally:
                        gc.enable()
                    case.subject.settle()
            progress.step(f"{workload.id} {_size_label(size)} round {round_no + 1}/{config.rounds}")
    finally:
        for case in cases.values():
            with contextlib.suppress(Exception):
                case.subject.close()
    for name in cases:
        for threads in thread_counts:
            s = series[name, threads]
            ordered = sorted(s.samples)
            rows.append(
                {
                    "workload": workload.id,
                    "size": size,
                    "subject": name,
                    "threads": threads,
                    "status": "ok",
                    "p50_us": _percentile(ordered, 0.5) / 1000,
                    "p99_us": _percentile(ordered, 0.99) / 1000,
                    "ops_per_s": s.ops / (s.wall_ns / 1e9) if s.wall_ns else 0.0,
                    "samples": len(ordered),
                }
            )
    _add_ratios(workload, rows)
    return rows


def _round_args(args: list[t.Any], ops: int, round_no: int) -> list[t.Any]:
    start = (round_no * ops) % len(args)
    chosen = args[start : start + ops]
    return chosen + args[: ops - len(chosen)]


def _thread_args(args: list[t.Any], ops: int, threads: int, round_no: int) -> list[list[t.Any]]:
    # Each thread does ``ops`` operations from its own stretch of the plan.
    return [_round_args(args, ops, round_no * threads + i) for i in range(threads)]


def _add_ratios(workload: Workload, rows: list[dict[str, t.Any]]) -> None:
    by_key = {(r["subject"], r["threads"]): r for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        if workload.reference == "self":
            ref = by_key.get((row["subject"], 1))
            row["reference"] = f"{row['subject']} on 1 thread"
        else:
            ref = by_key.get((workload.reference, row["threads"]))
            row["reference"] = workload.reference
        if ref is None:
            row["ratio"] = None
        elif workload.metric == "throughput":
            row["ratio"] = row["ops_per_s"] / ref["ops_per_s"] if ref["ops_per_s"] else None
        else:
            row["ratio"] = row["p50_us"] / ref["p50_us"] if ref["p50_us"] else None
        row["ratio_of"] = "ops/s" if workload.metric == "throughput" else "p50"


def _memory_rows(env: _Env, size: int, progress: _Progress) -> list[dict[str, t.Any]]:
    """Run the mix through a tier whose L1 has ``max_bytes``, then weigh what L1 holds."""
    from tieredcache.backends.memory import MemoryBackend

    bound = env.config.memory_bytes or (256 * 1024 if size <= 1024 else 1024 * 1024)
    prefix = f"tcb:{env.run_id}:memory:{size}:"
    subject = _Tiered(env, prefix, l1_maxsize=1_000_000, l1_max_bytes=bound)
    try:
        rng = random.Random(env.config.seed)
        capacity = bound // (size + 200)  # roughly how many entries fit
        universe = 4 * capacity
        for i in range(universe):  # L2 holds every key; L1 overflows many times over
            subject.set(f"z{i}", _value(size, i))
        ops = max(3 * capacity, env.config.ops * 10)
        for i, k in enumerate(_zipf_keys(rng, ops, universe)):
            if rng.random() < 0.1:
                subject.set(f"z{k}", _value(size, i))
            else:
                subject.get(f"z{k}")
        accounted = subject.l1.currsize
        held = list(subject.l1._data.items())
        # Weigh a twin of the L1 built from fresh objects (keys, values, entries), so that
        # nothing outside it shares what is measured.
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            twin = MemoryBackend(1_000_000, max_bytes=bound)
            for key, entry in held:
                fresh = entry.replace(value=bytes(bytearray(entry.value)))
                twin.set_entry((key + ".")[:-1], fresh)
            del fresh
            gc.collect()
            weighed = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        entries = len(twin)
    finally:
        subject.close()
    progress.step(f"memory {_size_label(size)}")
    return [
        {
            "workload": "memory",
            "size": size,
            "subject": "tieredcache",
            "threads": 1,
            "status": "ok",
            "bound_bytes": bound,
            "accounted_bytes": accounted,
            "measured_bytes": weighed,
            "entries": entries,
            "ratio": weighed / bound,
            "reference": "max_bytes",
            "ratio_of": "bytes",
        }
    ]


# == the report ===============================================================================


@dataclasses.dataclass
class Report:
    """A finished run: machine, settings, rows and target verdicts."""

    machine: dict[str, t.Any]
    config: dict[str, t.Any]
    rows: list[dict[str, t.Any]]
    targets: list[dict[str, t.Any]]
    seconds: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)

    def to_markdown(self) -> str:
        return _markdown(self)

    def write(self, directory: str, *, plot: bool = True) -> list[str]:
        """Write ``results.json``, ``results.md`` and (with matplotlib) ``results.png``."""
        os.makedirs(directory, exist_ok=True)
        written = []
        for name, text in (("results.json", self.to_json()), ("results.md", self.to_markdown())):
            path = os.path.join(directory, name)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text)
            written.append(path)
        if plot:
            path = os.path.join(directory, "results.png")
            if _plot(self, path):
                written.append(path)
        return written


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _evaluate(targets: t.Sequence[Target], rows: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    found = {
        (r["workload"], r["size"], r["subject"], r["threads"]): r
        for r in rows
        if r["status"] == "ok"
    }
    sizes = sorted({r["size"] for r in rows})
    verdicts = []
    for target in targets:
        measured: dict[str, float | None] = {}
        for size in sizes:
            value: float | None = None
            if target.measure == "memory":
                row = found.get((target.workload, size, target.numerator, 1))
                value = row["ratio"] if row else None
            else:
                num = found.get((target.workload, size, target.numerator, target.threads))
                den = found.get((target.workload, size, target.denominator, 1))
                if target.measure == "p50" and num and den and den["p50_us"]:
                    value = num["p50_us"] / den["p50_us"]
                elif target.measure == "ops" and num and den and den["ops_per_s"]:
                    value = num["ops_per_s"] / den["ops_per_s"]
            measured[_size_label(size)] = value
        values = [v for v in measured.values() if v is not None]
        met: bool | None = None
        if values:
            met = all(v <= target.bound if target.at_most else v >= target.bound for v in values)
        verdicts.append(
            {
                "id": target.id,
                "text": target.text,
                "bound": target.bound,
                "at_most": target.at_most,
                "measured": measured,
                "met": met,
            }
        )
    return verdicts


def _fmt(value: t.Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def _ratio_text(value: t.Any) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _markdown(report: Report) -> str:
    m = report.machine
    lines = [
        "# tieredcache benchmarks",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} cores; Python "
        f"{m.get('python', '?')}; redis-server {m.get('redis_server', '?')}; memcached "
        f"{m.get('memcached', '?')}; redis-py {m.get('redis-py', '?')} (hiredis "
        f"{m.get('hiredis', 'not installed')}). Run took {report.seconds:.0f} s"
        f"{' (--quick)' if report.config.get('quick') else ''}.",
        "",
        "## Targets",
        "",
    ]
    sizes = sorted({r["size"] for r in report.rows})
    header = "| target | " + " | ".join(_size_label(s) for s in sizes) + " | bound | holds |"
    lines += [header, "|" + "---|" * (len(sizes) + 3)]
    for v in report.targets:
        cells = [_ratio_text(v["measured"].get(_size_label(s))) for s in sizes]
        bound = ("<= " if v["at_most"] else ">= ") + f"{v['bound']:.3g}x"
        holds = {True: "yes", False: "**no**", None: "-"}[v["met"]]
        lines.append(f"| {v['text']} | " + " | ".join(cells) + f" | {bound} | {holds} |")
    for workload in [*WORKLOADS, None]:
        wid = "memory" if workload is None else workload.id
        rows = [r for r in report.rows if r["workload"] == wid]
        if not rows:
            continue
        lines += ["", f"## {'L1 memory under the mix' if workload is None else workload.title}", ""]
        if workload is None:
            lines += [
                "| value | max_bytes | accounted | measured | entries | measured ÷ bound |",
                "|---|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(
                    f"| {_size_label(r['size'])} | {r['bound_bytes']:,} | "
                    f"{r['accounted_bytes']:,} | {r['measured_bytes']:,} | {r['entries']:,} | "
                    f"{_ratio_text(r['ratio'])} |"
                )
            continue
        ratio_head = (
            f"ops/s ÷ {workload.reference}"
            if workload.metric == "throughput"
            else f"p50 ÷ {workload.reference}"
        )
        if workload.reference == "self":
            ratio_head = "ops/s ÷ same on 1 thread"
        threaded = workload.threaded
        lines += [
            "| value | subject |"
            + (" threads |" if threaded else "")
            + f" p50 µs | p99 µs | ops/s | {ratio_head} |",
            "|---|---|" + ("---|" if threaded else "") + "---|---|---|---|",
        ]
        for r in rows:
            lead = f"| {_size_label(r['size'])} | {r['subject']} |" + (
                f" {r['threads']} |" if threaded else ""
            )
            if r["status"] != "ok":
                lines.append(f"{lead} {r['detail']} | | | |")
                continue
            lines.append(
                f"{lead} {_fmt(r['p50_us'])} | {_fmt(r['p99_us'])} | "
                f"{_fmt(r['ops_per_s'])} | {_ratio_text(r.get('ratio'))} |"
            )
    lines.append("")
    return "\n".join(lines)


def _plot(report: Report, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({r["size"] for r in report.rows})
    targets = [v for v in report.targets if any(x is not None for x in v["measured"].values())]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.45 * max(len(targets), 8) + 2))
    # Left: every target as measured ÷ bound (under 1 holds for "at most", over 1 for "at least").
    labels, width = [v["text"] for v in targets], 0.8 / max(1, len(sizes))
    for j, size in enumerate(sizes):
        scores = []
        for v in targets:
            value = v["measured"].get(_size_label(size))
            scores.append(0 if value is None else value / v["bound"])
        ys = [i + j * width for i in range(len(targets))]
        left.barh(ys, scores, height=width, label=_size_label(size))
    left.axvline(1.0, color="black", linewidth=1)
    left.set_yticks([i + width * (len(sizes) - 1) / 2 for i in range(len(targets))])
    left.set_yticklabels([_wrap(label, 44) for label in labels], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("measured ratio ÷ target bound (≤ 1 holds for ≤ targets, ≥ 1 for ≥ targets)")
    left.set_title("Targets")
    left.legend(fontsize=8)
    # Right: p50 latency of tieredcache and each workload's reference, single-thread rows.
    pairs = []
    for workload in WORKLOADS:
        if workload.threaded:
            continue
        subject = "tieredcache Django" if workload.id.startswith("django") else "tieredcache"
        for size in sizes:
            found = {
                r["subject"]: r
                for r in report.rows
                if r["workload"] == workload.id and r["size"] == size and r["status"] == "ok"
            }
            if subject in found and workload.reference in found:
                pairs.append(
                    (
                        f"{workload.title} ({_size_label(size)})",
                        found[subject]["p50_us"],
                        found[workload.reference]["p50_us"],
                        workload.reference,
                    )
                )
    ys = list(range(len(pairs)))
    right.barh([y - 0.2 for y in ys], [p[1] for p in pairs], height=0.4, label="tieredcache")
    right.barh([y + 0.2 for y in ys], [p[2] for p in pairs], height=0.4, label="reference peer")
    right.set_yticks(ys)
    right.set_yticklabels([_wrap(f"{p[0]} vs {p[3]}", 48) for p in pairs], fontsize=7)
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("p50 latency, µs (log scale)")
    right.set_title("tieredcache and the reference peer of each workload")
    right.legend(fontsize=8)
    m = report.machine
    fig.suptitle(
        f"tieredcache {m.get('tieredcache', '')} - {m.get('cpu', '?')}, {m.get('nproc', '?')} "
        f"cores, Python {m.get('python', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)


# == machine ==================================================================================


def describe_machine(redis_url: str, memcached: tuple[str, int]) -> dict[str, t.Any]:
    """Cores, CPU model, Python, server and package versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, t.Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    for label, module in (
        ("tieredcache", "tieredcache"),
        ("redis-py", "redis"),
        ("hiredis", "hiredis"),
        ("cachetools", "cachetools"),
        ("pymemcache", "pymemcache"),
        ("django", "django"),
        ("django-redis", "django_redis"),
    ):
        with contextlib.suppress(Exception):
            info[label] = getattr(importlib.import_module(module), "__version__", "?")
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        info["redis_server"] = client.info("server").get("redis_version")
        client.close()
    with contextlib.suppress(Exception):
        from pymemcache.client.base import Client

        mc = Client(memcached, connect_timeout=2, timeout=2)
        info["memcached"] = mc.version().decode()
        mc.close()
    return info


# == entry point ==============================================================================


def run(config: BenchConfig) -> Report:
    """Run the benchmarks of ``config`` and return the report (nothing is written).

    Starts ``redis-server`` and ``memcached`` on loopback unless ``config`` gives servers;
    they are stopped before returning.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_url, memcached = _servers(config, stack)
        if config.keep_awake:
            stack.enter_context(_busy_loop())
        env = _Env(
            config=config,
            redis_url=redis_url,
            memcached=memcached,
            run_id=secrets.token_hex(4),
            rng=random.Random(config.seed),
        )
        workloads = _selected(config)
        with_memory = not config.only or any("memory".startswith(p) for p in config.only)
        steps = len(workloads) * len(config.sizes) * config.rounds
        steps += len(config.sizes) if with_memory else 0
        progress = _Progress(steps, config.progress)
        rows: list[dict[str, t.Any]] = []
        try:
            for workload in workloads:
                for size in config.sizes:
                    rows.extend(_run_workload(workload, env, size, progress))
            if with_memory:
                for size in config.sizes:
                    rows.extend(_memory_rows(env, size, progress))
        finally:
            progress.close()
        machine = describe_machine(redis_url, memcached)
    return Report(
        machine=machine,
        config=dataclasses.asdict(config),
        rows=rows,
        targets=_evaluate(TARGETS, rows),
        seconds=time.monotonic() - started,
    )


@contextlib.contextmanager
def _busy_loop() -> t.Iterator[None]:
    """A child process spinning at the lowest priority; stopped (by its PID) at the end."""
    import subprocess

    code = "import os\nos.nice(19)\nwhile True:\n    pass\n"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield
    finally:
        child.kill()
        child.wait()


def _servers(config: BenchConfig, stack: contextlib.ExitStack) -> tuple[str, tuple[str, int]]:
    from tieredcache.testing.servers import MemcachedServer
    from tieredcache.testing.servers import RedisServer

    redis_url = config.redis_url
    if redis_url is None:
        server = stack.enter_context(RedisServer())
        redis_url = server.url
    memcached = config.memcached
    if memcached is None:
        mc = stack.enter_context(MemcachedServer())
        memcached = mc.address
    return redis_url, memcached
