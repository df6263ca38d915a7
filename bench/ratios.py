"""The target ratios on two key distributions, every subject in one process and one run.

Starts its own ``redis-server`` on loopback (pinned to CPU 0 where ``os.sched_setaffinity``
exists; this process to CPU 1), then times, in alternating rounds, each hot path of
tieredcache next to the peer its target names, over 10,000 keys of 64-byte values visited
either in shuffled order (every key once per pass, "uniform") or drawn Zipf(1.1) ("zipf"):

- an L1 hit, against a ``cachetools.TTLCache`` + lock tier's L1 hit;
- an L2 hit (refilling L1), against redis-py ``GET`` + ``pickle.loads`` (and the
  ``RedisBackend``'s own read of the key, the floor under the composition);
- a ``SequentialWrite`` set, against redis-py ``SET`` of the pickled value;
- ``RaceWrite`` set, against the ``SequentialWrite`` set;
- ``get_many`` of 100 keys all in L2, against one ``MGET`` + ``pickle.loads`` (and, to show
  the floor, the ``RedisBackend``'s own batch read and the cachetools tier's ``get_many``);
- the Django backend's L1 hit, against Django's ``LocMemCache`` get.

Run it with ``python bench/ratios.py [--dist uniform|zipf] [--no-hiredis]``; it prints, for
each subject, the mean and the median (p50) time of an operation (medians over the rounds),
and the ratios by both; a target is judged by the p50 ratio. An operation that goes to a
server is timed one at a time; an L1 hit, too short for that, as a loop (its p50 is its
mean). ``--no-hiredis`` hides ``hiredis`` from
redis-py, so both parsers are measured from one environment.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import statistics
import sys
import threading
import time
import typing as t

KEYS = 10_000
VALUE = b"v" * 64
TTL = 300
PX = TTL * 1000


def _keys(dist: str, count: int, rng: random.Random) -> list[int]:
    if dist == "uniform":
        order: list[int] = []
        while len(order) < count:
            one = list(range(KEYS))
            rng.shuffle(one)
            order.extend(one)
        return order[:count]
    weights = [1.0 / (i + 1) ** 1.1 for i in range(KEYS)]
    return rng.choices(range(KEYS), weights, k=count)


def _time(
    op: t.Callable[[t.Any], object], args: list[t.Any], prepare: t.Any = None
) -> tuple[float, float]:
    """Nanoseconds per operation over ``args`` (``prepare`` untimed before each): the
    mean and the median. Operations without ``prepare`` are timed as one loop (the median
    is then the mean): an L1 hit is too short to time one at a time."""
    clock = time.perf_counter_ns
    if prepare is None:
        start = clock()
        for arg in args:
            op(arg)
        mean = (clock() - start) / len(args)
        return mean, mean
    samples = []
    for arg in args:
        prepare(arg)
        start = clock()
        op(arg)
        samples.append(clock() - start)
    return sum(samples) / len(samples), statistics.median(samples)


def _nothing(arg: object) -> None:
    """The ``prepare`` of an operation timed one at a time that needs no preparation."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", choices=("uniform", "zipf"), default="uniform")
    parser.add_argument("--no-hiredis", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=4000)
    parser.add_argument("--only", action="append", default=[])
    options = parser.parse_args()
    if options.no_hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import cachetools
    import redis

    from tieredcache import MemoryBackend
    from tieredcache import RaceWrite
    from tieredcache import RedisBackend
    from tieredcache import TieredCache
    from tieredcache.policies.write import LoserPolicy
    from tieredcache.testing.servers import RedisServer

    rng = random.Random(7)
    with RedisServer() as server:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            try:
                os.sched_setaffinity(server.pid, {0})  # type: ignore[attr-defined]
            except Exception:
                pass
            os.sched_setaffinity(0, {1})
        url = server.url
        client = redis.Redis.from_url(url)
        names = [f"k{i}" for i in range(KEYS)]

        def tiered(prefix: str, **kw: t.Any) -> TieredCache:
            return TieredCache(
                MemoryBackend(2 * KEYS), RedisBackend.from_url(url, prefix=prefix), **kw
            )

        native = tiered("n:")
        race = tiered("r:", write=RaceWrite(LoserPolicy.OFFLOAD))
        tier_store: t.Any = cachetools.TTLCache(2 * KEYS, TTL)
        lock = threading.Lock()
        miss = object()
        loads, dumps = pickle.loads, pickle.dumps
        raw_get, raw_set, mget = client.get, client.set, client.mget

        def tier_get(key: str) -> t.Any:
            with lock:
                value = tier_store.get(key, miss)
            if value is not miss:
                return value
            data = raw_get("c:" + key)
            if data is None:
                return None
            value = loads(data)
            with lock:
                tier_store[key] = value
            return value

        def tier_get_many(keys: list[str]) -> dict[str, t.Any]:
            # The hand-written tier's batch read: its L1, then one MGET for what it missed.
            with lock:
                found = {k: v for k in keys if (v := tier_store.get(k, miss)) is not miss}
            missing = [k for k in keys if k not in found]
            if missing:
                values = mget(["c:" + k for k in missing])
                loaded = {k: loads(v) for k, v in zip(missing, values) if v is not None}
                with lock:
                    for k, v in loaded.items():
                        tier_store[k] = v
                found.update(loaded)
            return found

        def tier_forget_many(keys: list[str]) -> None:
            with lock:
                for k in keys:
                    tier_store.pop(k, None)

        def redis_get(key: str) -> t.Any:
            data = raw_get("p:" + key)
            return None if data is None else loads(data)

        def redis_set(key: str) -> None:
            raw_set("p:" + key, dumps(VALUE, pickle.HIGHEST_PROTOCOL), px=PX)

        def redis_mget(keys: list[str]) -> dict[str, t.Any]:
            values = mget(["p:" + k for k in keys])
            return {k: loads(v) for k, v in zip(keys, values) if v is not None}

        from django.conf import settings

        if not settings.configured:
            settings.configure(SECRET_KEY="ratios", USE_TZ=True, CACHES={})
        from django.core.cache.backends.locmem import LocMemCache

        from tieredcache.contrib.django import TieredCache as DjangoTiered

        locmem = LocMemCache("ratios", {"TIMEOUT": TTL, "OPTIONS": {"MAX_ENTRIES": 2 * KEYS}})
        django_tiered = DjangoTiered(
            url, {"TIMEOUT": TTL, "KEY_PREFIX": "d", "OPTIONS": {"l1_maxsize": 2 * KEYS}}
        )

        # Everything in L2 and (where there is one) in L1.
        for name in names:
            native.set(name, VALUE, TTL)
            raw_set("p:" + name, dumps(VALUE), px=PX)
            raw_set("c:" + name, dumps(VALUE), px=PX)
            tier_get(name)
            locmem.set(name, VALUE)
            django_tiered.set(name, VALUE)
        order = [names[i] for i in _keys(options.dist, options.ops * options.rounds * 2, rng)]
        batches = [
            [names[i] for i in rng.sample(range(KEYS), 100)] for _ in range(options.ops // 20)
        ]

        def forget(key: str) -> None:
            native.l1.delete(key)

        def forget_many(keys: list[str]) -> None:
            native.l1.delete_many(keys)

        cases: dict[str, tuple[t.Callable[[t.Any], object], t.Any, str]] = {
            "l1 native": (native.get, None, "key"),
            "l1 cachetools tier": (tier_get, None, "key"),
            "l2 native": (native.get, forget, "key"),
            "l2 redis-py GET+loads": (redis_get, _nothing, "key"),
            "l2 RedisBackend": (native.l2.get_entry, _nothing, "key"),
            "set native": (lambda k: native.set(k, VALUE, TTL), _nothing, "key"),
            "set RaceWrite": (lambda k: race.set(k, VALUE, TTL), _nothing, "key"),
            "set redis-py SET": (redis_set, _nothing, "key"),
            "get_many native": (native.get_many, forget_many, "batch"),
            "get_many MGET+loads": (redis_mget, _nothing, "batch"),
            "get_many RedisBackend": (native.l2.get_entries, _nothing, "batch"),
            "get_many cachetools tier": (tier_get_many, tier_forget_many, "batch"),
            "django native": (django_tiered.get, None, "key"),
            "django LocMemCache": (locmem.get, None, "key"),
        }
        if options.only:
            cases = {n: c for n, c in cases.items() if any(n.startswith(p) for p in options.only)}
        results: dict[str, list[float]] = {name: [] for name in cases}
        medians: dict[str, list[float]] = {name: [] for name in cases}
        for round_no in range(options.rounds):
            names_order = list(cases) if round_no % 2 == 0 else list(cases)[::-1]
            for name in names_order:
                op, prepare, kind = cases[name]
                if kind == "key":
                    start = (round_no * options.ops) % (len(order) - options.ops)
                    args: list[t.Any] = order[start : start + options.ops]
                else:
                    args = batches
                gc.collect()
                gc.disable()
                try:
                    mean_ns, median_ns = _time(op, args, prepare)
                    results[name].append(mean_ns)
                    medians[name].append(median_ns)
                finally:
                    gc.enable()
            race.drain()
        mean = {name: statistics.median(v[1:] or v) for name, v in results.items()}
        p50 = {name: statistics.median(v[1:] or v) for name, v in medians.items()}
        print(f"{'':28s} {'mean':>8s}    {'p50':>8s}")
        for name, ns in mean.items():
            print(f"{name:28s} {ns / 1000:8.2f} us {p50[name] / 1000:8.2f} us")
        pairs = [
            ("L1 hit / cachetools tier", "l1 native", "l1 cachetools tier", 0.3),
            ("L2 hit / GET+loads", "l2 native", "l2 redis-py GET+loads", 0.8),
            ("  RedisBackend alone / GET", "l2 RedisBackend", "l2 redis-py GET+loads", None),
            ("set / SET", "set native", "set redis-py SET", 1.1),
            ("RaceWrite / Sequential set", "set RaceWrite", "set native", 0.5),
            ("get_many / MGET+loads", "get_many native", "get_many MGET+loads", 1.2),
            # No targets, the floor: the backend alone, and a minimal hand-written tier.
            ("  RedisBackend alone / MGET", "get_many RedisBackend", "get_many MGET+loads", None),
            ("  cachetools tier / MGET", "get_many cachetools tier", "get_many MGET+loads", None),
            ("Django L1 hit / LocMemCache", "django native", "django LocMemCache", 1.0),
        ]
        hiredis = "without hiredis" if options.no_hiredis else "with hiredis"
        print(f"-- ratios, {options.dist}, {hiredis} --")
        print(f"{'':32s} {'mean':>6s} {'p50':>6s}")
        for label, num, den, bound in pairs:
            if num in mean and den in mean:
                by_mean = mean[num] / mean[den]
                by_p50 = p50[num] / p50[den]
                if bound is None:
                    print(f"{label:32s} {by_mean:5.2f}x {by_p50:5.2f}x")
                    continue
                mark = "ok" if by_p50 <= bound else "MISSED"
                print(f"{label:32s} {by_mean:5.2f}x {by_p50:5.2f}x  (target <= {bound}x) {mark}")
        for cache in (native, race):
            cache.clear()
            cache.close()
        django_tiered.tiered.clear()
        client.flushdb()
        client.close()


if __name__ == "__main__":
    main()
