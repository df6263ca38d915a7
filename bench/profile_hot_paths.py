"""Where the time of tieredcache's hot paths goes: a profile of each, next to its peer.

Starts its own ``redis-server`` on loopback, then for each hot path (an L1 hit, an L2 hit
with its refill, a ``SequentialWrite`` set, ``get_many`` of 100 keys from L2) prints:

- the median time of tieredcache and of the peer the target compares it with, measured
  in alternation, and their ratio;
- the composition's own cost: the same path over an in-process L2 that answers in about a
  microsecond, so what remains is the composition (ordering, policies, refill);
- the top functions of a ``cProfile`` run of the path (``--lines`` adds a
  ``line_profiler`` report of the composition's read and write functions when
  line_profiler is installed).

Run it with ``python bench/profile_hot_paths.py [--lines]``. The docs page
``docs/benchmarks.rst`` quotes its output where a target is not met. For a sampling
profile of a whole benchmark run, ``py-spy record -o profile.svg -- python -m tieredcache
bench --quick --only get-l2`` works as well.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pickle
import pstats
import statistics
import sys
import time
import typing as t

# Run from a checkout: import the tieredcache next to this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis

from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.testing.servers import RedisServer

VALUE = b"v" * 64
TTL = 300


class _InProcess(MemoryBackend):
    """An L2 that answers in about a microsecond, and is treated as remote."""

    local = False


def _median_ns(fn: t.Callable[[], object], prepare: t.Callable[[], object] | None, n: int) -> float:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        if prepare is not None:
            prepare()
        start = clock()
        fn()
        samples.append(clock() - start)
    return statistics.median(samples)


def _compare(
    title: str,
    ours: t.Callable[[], object],
    peer: t.Callable[[], object],
    prepare: t.Callable[[], object] | None,
    rounds: int = 20,
    n: int = 200,
) -> None:
    mine, theirs = [], []
    gc.disable()
    try:
        for i in range(rounds):
            pair = [(ours, mine), (peer, theirs)]
            for fn, out in pair if i % 2 == 0 else pair[::-1]:
                out.append(_median_ns(fn, prepare if fn is ours else None, n))
    finally:
        gc.enable()
    a, b = statistics.median(mine), statistics.median(theirs)
    print(f"{title:48s} tieredcache {a / 1000:8.2f} us   peer {b / 1000:8.2f} us   {a / b:5.2f}x")


def _profile(title: str, fn: t.Callable[[], object], n: int, top: int) -> None:
    print(f"\n--- cProfile: {title} ({n} calls) ---")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        fn()
    profiler.disable()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", action="store_true", help="add line_profiler reports")
    parser.add_argument("--top", type=int, default=15, help="functions per cProfile report")
    args = parser.parse_args()
    with RedisServer() as server:
        raw = redis.Redis.from_url(server.url)
        l1 = MemoryBackend(4096)
        l2 = RedisBackend.from_url(server.url, prefix="profile:")
        cache = TieredCache(l1, l2)
        keys = [f"k{i}" for i in range(100)]
        for key in keys:
            cache.set(key, VALUE, TTL)
            raw.set(key, pickle.dumps(VALUE), px=TTL * 1000)
        local = TieredCache(MemoryBackend(4096), _InProcess(100_000))
        local.set("k0", VALUE, TTL)
        payload = pickle.dumps(VALUE)

        print("== medians, measured in alternation ==")
        _compare(
            "get, L1 hit vs redis-py GET", lambda: cache.get("k0"), lambda: raw.get("k0"), None
        )
        _compare(
            "get, L2 hit + refill vs GET + pickle.loads",
            lambda: cache.get("k1"),
            lambda: pickle.loads(raw.get("k1")),
            lambda: l1.delete("k1"),
        )
        _compare(
            "RedisBackend.get alone vs GET + pickle.loads",
            lambda: l2.get("k1"),
            lambda: pickle.loads(raw.get("k1")),
            None,
        )
        _compare(
            "SequentialWrite set vs SET",
            lambda: cache.set("k2", VALUE, TTL),
            lambda: raw.set("k2", pickle.dumps(VALUE), px=TTL * 1000),
            None,
        )

        def forget_all() -> None:
            for key in keys:
                l1.delete(key)

        _compare(
            "get_many(100) from L2 vs MGET + 100 loads",
            lambda: cache.get_many(keys),
            lambda: [pickle.loads(v) for v in raw.mget(keys)],
            forget_all,
            rounds=10,
            n=20,
        )
        print("\n== the composition alone (an in-process L2) ==")
        inner = t.cast(MemoryBackend, local.l2)
        _compare(
            "L2 hit + refill vs the L2's own get_entry",
            lambda: local.get("k0"),
            lambda: inner.get_entry("k0"),
            lambda: local.l1.delete("k0"),
        )
        _compare(
            "SequentialWrite set vs the L2's own set",
            lambda: local.set("k0", VALUE, TTL),
            lambda: inner.set("k0", VALUE, TTL),
            None,
        )

        def l2_hit() -> None:
            l1.delete("k1")
            cache.get("k1")

        _profile("get, L2 hit + refill", l2_hit, 3000, args.top)
        _profile("SequentialWrite set", lambda: cache.set("k2", VALUE, TTL), 3000, args.top)
        _profile(
            "get_many(100), all in L2", lambda: (forget_all(), cache.get_many(keys)), 200, args.top
        )
        del payload
        if args.lines:
            _line_profiles(cache, l1)
        cache.close()
        local.close()
        raw.close()
    return 0


def _line_profiles(cache: TieredCache, l1: MemoryBackend) -> None:
    try:
        from line_profiler import LineProfiler
    except ImportError:
        print("\nline_profiler is not installed: pip install line_profiler")
        return
    from tieredcache import tiered

    profiler = LineProfiler()
    for name in ("get_entry", "_read_through", "_refill", "set_entries", "_guarded"):
        function = getattr(tiered.TieredCache, name, None)
        if function is not None:
            profiler.add_function(function)

    def run() -> None:
        for _ in range(2000):
            l1.delete("k1")
            cache.get("k1")
            cache.set("k2", VALUE, TTL)

    profiler.runcall(run)
    print("\n--- line_profiler: the composition's read and write paths ---")
    profiler.print_stats(output_unit=1e-6)


if __name__ == "__main__":
    sys.exit(main())
