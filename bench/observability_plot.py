"""Draw docs/_static/observability.png from a short real run against a real Redis.

Two processes share a Redis L2 with a backplane (tracking on). A reader thread reads a hot
set of keys; a writer updates some of them; halfway through, another program (a raw
redis-py client) flushes the database. The figures plotted are the ones the Prometheus
collector exports, sampled every 100 ms from ``prometheus_client``'s registry.

    python bench/observability_plot.py [redis-url]   # default: a throwaway redis-server
"""

from __future__ import annotations

import random
import sys
import threading
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import redis
from prometheus_client import CollectorRegistry

from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.contrib.prometheus import TieredCacheCollector
from tieredcache.redis.backplane import RedisBackplane
from tieredcache.testing.servers import RedisServer

SECONDS = 6.0
STEP = 0.1


def run(url: str, out: str) -> None:
    backplane = RedisBackplane.from_url(url, channel="plot", tracking=True)
    cache = TieredCache(
        MemoryBackend(maxsize=5000), RedisBackend.from_url(url, prefix="plot:"), backplane=backplane
    )
    registry = CollectorRegistry()
    registry.register(TieredCacheCollector(cache, name="plot"))
    backplane.wait_connected(5)
    keys = [f"k{i}" for i in range(2000)]
    for key in keys:
        cache.set(key, key, ttl=600)
    stop = threading.Event()

    def reader() -> None:
        rnd = random.Random(1)
        while not stop.is_set():
            cache.get(keys[min(int(rnd.expovariate(1 / 200)), len(keys) - 1)])

    def writer() -> None:
        rnd = random.Random(2)
        while not stop.wait(0.002):
            cache.set(rnd.choice(keys), "new", ttl=600)

    raw = redis.Redis.from_url(url)
    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    cache.reset_stats()
    for thread in threads:
        thread.start()
    series: dict[str, list[float]] = {"t": [], "l1": [], "l2": [], "miss": [], "inv": []}
    started = time.monotonic()
    flushed = False
    get = registry.get_sample_value
    while (now := time.monotonic() - started) < SECONDS:
        if not flushed and now > SECONDS / 2:
            raw.flushdb()  # another program empties the database
            flushed = True
        series["t"].append(now)
        series["l1"].append(get("tieredcache_hits_total", {"cache": "plot", "tier": "l1"}) or 0)
        series["l2"].append(get("tieredcache_hits_total", {"cache": "plot", "tier": "l2"}) or 0)
        series["miss"].append(
            get("tieredcache_misses_total", {"cache": "plot", "tier": "tiered"}) or 0
        )
        series["inv"].append(get("tieredcache_invalidations_total", {"cache": "plot"}) or 0)
        time.sleep(STEP)
    stop.set()
    for thread in threads:
        thread.join()
    raw.close()
    cache.close()

    def rate(values: list[float]) -> list[float]:
        return [0.0] + [(b - a) / STEP for a, b in zip(values, values[1:])]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.plot(series["t"], rate(series["l1"]), label="rate(tieredcache_hits_total{tier=l1})")
    top.plot(series["t"], rate(series["l2"]), label="rate(tieredcache_hits_total{tier=l2})")
    top.plot(series["t"], rate(series["miss"]), label="rate(tieredcache_misses_total{tier=tiered})")
    top.set_ylabel("per second")
    top.legend(fontsize=8)
    bottom.plot(series["t"], rate(series["inv"]), color="tab:red")
    bottom.set_ylabel("invalidations / s")
    bottom.set_xlabel("seconds (FLUSHDB by another client at the dashed line)")
    for axis in (top, bottom):
        axis.axvline(SECONDS / 2, color="grey", linestyle="--")
        axis.grid(alpha=0.3)
    fig.suptitle("One process, Redis L2 with tracking: reads, writes, then a FLUSHDB elsewhere")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    out = "docs/_static/observability.png"
    if len(sys.argv) > 1:
        run(sys.argv[1], out)
        return
    server = RedisServer()
    server.start()
    try:
        run(server.url, out)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
