"""The workloads: which operations a table of the report times, on which keys.

A :class:`Workload` is an operation pattern (``kind``), a key distribution
(``distribution``: random draws from a hot set, Zipf, or every key once per pass in
shuffled order) over a key space (the hot set, :attr:`BenchConfig.keys` or
:attr:`BenchConfig.wide_keys`), the subjects that run it and the reference peer the ratios
are taken against. :func:`build_case` loads a subject with the keys a workload reads and
returns the operation the timing harness calls. :data:`TARGETS` are the ratios the library
promises.
"""

from __future__ import annotations

import dataclasses
import random
import typing as t

from tieredcache.bench.config import Env
from tieredcache.bench.subjects import Subject

__all__ = [
    "MANY",
    "TARGETS",
    "WORKLOADS",
    "Case",
    "Target",
    "Workload",
    "build_case",
    "make_value",
    "shuffled_passes",
    "stretch",
    "zipf_keys",
]

#: Keys per ``get_many``/``set_many`` call.
MANY = 100


@dataclasses.dataclass(frozen=True)
class Workload:
    """A table of the report: subjects doing the same operations, one reference among them.

    ``kind`` is the operation pattern (see :func:`build_case`); ``metric`` is ``"latency"``
    (the ratio is p50 over the reference's p50) or ``"throughput"`` (ops/s over the
    reference's ops/s, at the same thread count). ``reference="self"`` compares each
    subject with itself on one thread. ``distribution`` is how keys are drawn:
    ``"random"`` (uniform draws, with repeats), ``"zipf"`` (Zipf, s = 1.1) or
    ``"shuffled"`` (every key once per pass, each pass in a new shuffled order); ``wide``
    draws them from :attr:`~tieredcache.bench.config.BenchConfig.wide_keys` distinct keys.
    ``sizes`` pins the value sizes (``None``: the run's).
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
    distribution: str = "random"
    wide: bool = False
    sizes: tuple[int, ...] | None = None


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
_W = Workload

#: Every workload, in report order.
# fmt: off
WORKLOADS: tuple[Workload, ...] = (
    _W("get-l1-hit", "get, L1 hit", "hit", (*_TIERS, *_L1[1:]), "cachetools tier",
       _LATENCY, False, 25, 20),
    _W("get-l2-hit", "get, L2 hit (refills L1)", "l2-hit", (*_TIERS, *_STORES), "redis-py"),
    _W("get-miss", "get, miss", "miss", (*_TIERS, *_STORES), "redis-py"),
    _W("set", "set, by write policy", "set", (*_POLICIES, *_TIERS[1:], *_STORES), "redis-py"),
    _W("get-many", "get_many of 100 keys, all in L2", "get-many", _BATCHED, "redis-py",
       _LATENCY, False, 1, 0.1),
    _W("set-many", "set_many of 100 keys", "set-many", _BATCHED, "redis-py",
       _LATENCY, False, 1, 0.1),
    _W("l1-threads", "get, L1 hit, threads (ops/s against the same subject on one thread)",
       "hit", _L1, "self", _THROUGHPUT, True, 25, 10),
    _W("mix", "90% get / 10% set, Zipf keys, threads", "mix", (*_TIERS, "redis-py"),
       "cachetools tier", _THROUGHPUT, True, 1, 1, distribution="zipf"),
    _W("uniform", "90% get / 10% set, uniform keys in shuffled order, threads", "mix",
       (*_TIERS, "redis-py"), "cachetools tier", _THROUGHPUT, True, 1, 1,
       distribution="shuffled", wide=True, sizes=(64,)),
    _W("django-get", "Django: get, L1 hit (a cache hit for the others)", "hit", _DJANGO,
       "Django LocMemCache", _LATENCY, False, 10, 5, distribution="shuffled", wide=True),
    _W("django-l2", "Django: get, L2 hit (refills L1; a Redis GET for the others)",
       "l2-hit", _DJANGO, "django-redis", distribution="shuffled", wide=True),
    _W("django-set", "Django: set", "set", _DJANGO, "django-redis",
       distribution="shuffled", wide=True),
    _W("django-mix", "Django: 90% get / 10% set, Zipf keys, threads", "mix", _DJANGO,
       "django-redis", _THROUGHPUT, True, 1, 1, distribution="zipf", wide=True),
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


@dataclasses.dataclass
class Case:
    """A subject set up for one workload: what one timed operation does.

    ``args`` is the plan: each timed operation is ``op(arg)`` for the next ``arg``, after
    ``prepare(arg)`` (untimed) when given; ``batch`` operations make one sample.
    ``cursor`` is where the next threaded round starts in the plan.
    """

    subject: Subject
    op: t.Callable[[t.Any], t.Any]
    args: list[t.Any]
    prepare: t.Callable[[t.Any], t.Any] | None = None
    batch: int = 1
    cursor: int = 0


def zipf_keys(rng: random.Random, count: int, universe: int, s: float = 1.1) -> list[int]:
    """``count`` key indexes in ``range(universe)`` drawn Zipf(``s``) (index 0 the most
    frequent)."""
    weights = [1.0 / (rank**s) for rank in range(1, universe + 1)]
    return rng.choices(range(universe), weights=weights, k=count)


def shuffled_passes(rng: random.Random, count: int, universe: int) -> list[int]:
    """At least ``count`` key indexes: every index of ``range(universe)`` once per pass,
    each pass in a new shuffled order."""
    order: list[int] = []
    while len(order) < count:
        one = list(range(universe))
        rng.shuffle(one)
        order.extend(one)
    return order


def make_value(size: int, i: int = 0) -> bytes:
    """A fresh ``bytes`` of ``size`` bytes (the L1 keeps objects as they are)."""
    return i.to_bytes(8, "little") + b"v" * max(0, size - 8)


def stretch(args: list[t.Any], count: int, start: int) -> list[t.Any]:
    """``count`` items of ``args`` from index ``start`` on, wrapping around."""
    begin = start % len(args)
    chosen = args[begin : begin + count]
    while len(chosen) < count:
        chosen += args[: count - len(chosen)]
    return chosen


def _draw(workload: Workload, rng: random.Random, count: int, universe: int) -> list[int]:
    if workload.distribution == "zipf":
        return zipf_keys(rng, count, universe)
    if workload.distribution == "shuffled":
        return shuffled_passes(rng, count, universe)
    return rng.choices(range(universe), k=count)


def build_case(workload: Workload, subject: Subject, env: Env, size: int, ops: int) -> Case:
    """Load ``subject`` with the keys ``workload`` reads and build its timed operation.

    ``ops`` is how many operations a round times; the plan is longer where the workload's
    distribution needs it (a shuffled pass visits every key once).
    """
    config = env.config
    rng = random.Random(config.seed)
    value = make_value(size)
    kind = workload.kind
    hot = max(1, min(1000, config.keys // 5))
    universe = config.wide_keys if workload.wide else hot
    if kind in ("hit", "l2-hit"):
        keys = [f"k{i}" for i in range(universe)]
        subject.preload(dict.fromkeys(keys, value))
        for key in keys:
            subject.get(key)  # an L1 that fills on read now holds it
        count = max(ops, universe) if workload.wide else ops
        order = [keys[i] for i in _draw(workload, rng, count, universe)]
        if kind == "hit":
            return Case(subject, subject.get, order, batch=workload.batch)
        prepare = subject.forget_near if subject.near else None
        return Case(subject, subject.get, order, prepare=prepare)
    if kind == "miss":
        return Case(subject, subject.get, [f"absent{i}" for i in range(ops)])
    if kind == "set":
        if workload.wide:
            keys = [f"w{i}" for i in _draw(workload, rng, max(ops, universe), universe)]
        else:
            keys = [f"w{i % hot}" for i in range(ops)]  # the hot set, in turn
        setter = subject.set
        return Case(subject, lambda key: setter(key, value), keys)
    if kind == "get-many":
        batches = [[f"m{b}:{i}" for i in range(MANY)] for b in range(10)]
        for batch in batches:
            subject.set_many(dict.fromkeys(batch, value))
        key_lists = [batches[i % len(batches)] for i in range(ops)]

        def forget(keys: list[str]) -> None:
            for key in keys:
                subject.forget_near(key)

        forget_all = forget if subject.near else None
        return Case(subject, subject.get_many, key_lists, prepare=forget_all)
    if kind == "set-many":
        mappings = [{f"n{b}:{i}": value for i in range(MANY)} for b in range(10)]
        return Case(subject, subject.set_many, [mappings[i % 10] for i in range(ops)])
    if kind == "mix":
        universe = config.wide_keys if workload.wide else config.keys
        subject.preload({f"z{i}": value for i in range(universe)})
        # Long enough that no thread of a round wraps around its stretch of the plan.
        count = max(ops * 4, 2 * universe)
        plan = [(rng.random() < 0.1, f"z{i}") for i in _draw(workload, rng, count, universe)]
        getter, setter = subject.get, subject.set

        def step(item: tuple[bool, str]) -> None:
            if item[0]:
                setter(item[1], value)
            else:
                getter(item[1])

        return Case(subject, step, plan)
    raise ValueError(f"unknown workload kind {kind!r}")
