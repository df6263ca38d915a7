"""Events, reset_stats(), and the Prometheus and OpenTelemetry exporters, with the real
libraries and a real Redis L2: what they report equals ``stats()``.

Sections: events, reset, exporters, spans.
"""

from __future__ import annotations

import logging
import typing as t
import uuid

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from tieredcache import CircuitBreaker
from tieredcache import MemoryBackend
from tieredcache import RedisBackend
from tieredcache import TieredCache
from tieredcache.contrib.figures import COUNTER
from tieredcache.contrib.figures import figures
from tieredcache.contrib.opentelemetry import instrument
from tieredcache.contrib.prometheus import TieredCacheCollector
from tieredcache.events import BACKPLANE_RESET
from tieredcache.events import BREAKER_CLOSED
from tieredcache.events import BREAKER_OPENED
from tieredcache.events import REPLAY_DONE
from tieredcache.events import STALE_SERVED
from tieredcache.events import Event
from tieredcache.events import Events
from tieredcache.redis.backplane import RedisBackplane
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.faults import FaultyBackend

PATIENCE = 10.0

# == events ====================================================================================


def test_subscribers_are_called_and_their_errors_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = Events()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    events.subscribe(STALE_SERVED, broken)
    unsubscribe = events.subscribe(STALE_SERVED, seen.append)
    with caplog.at_level(logging.ERROR, logger="tieredcache.events"):
        events.emit(STALE_SERVED, key="k")
    assert seen == [Event(STALE_SERVED, {"key": "k"})]
    assert "stale_served event callback raised" in caplog.text
    unsubscribe()
    events.unsubscribe(STALE_SERVED, broken)
    assert events.subscribers(STALE_SERVED) == 0
    with pytest.raises(ValueError, match="unknown event"):
        events.subscribe("no-such-event", seen.append)
    with pytest.raises(TypeError):
        events.subscribe(STALE_SERVED, t.cast(t.Any, 42))


def test_breaker_and_replay_events(redis_url: str) -> None:
    clock = FakeClock()
    l2 = FaultyBackend(RedisBackend.from_url(redis_url, prefix="obs:"))
    breaker = CircuitBreaker(failures=2, reset_after=5.0, clock=clock)
    with TieredCache(MemoryBackend(), l2, breaker=breaker, fail_open=True) as cache:
        seen: list[str] = []
        for name in (BREAKER_OPENED, BREAKER_CLOSED, REPLAY_DONE):
            cache.events.subscribe(name, lambda event: seen.append(event.name))
        l2.fail("set", "get")
        cache.set("a", 1)
        cache.set("b", 2)  # the second failure opens the breaker
        assert seen == [BREAKER_OPENED]
        l2.recover()
        clock.advance(5.0)  # half-open: the next call probes, succeeds, closes
        assert cache.get("zzz") is None
        assert wait_until(lambda: REPLAY_DONE in seen, PATIENCE)
        assert seen[:2] == [BREAKER_OPENED, BREAKER_CLOSED]
        assert cache.l2.get("a") == 1 and cache.l2.get("b") == 2


def test_stale_served_and_backplane_reset_events(redis_url: str) -> None:
    clock = FakeClock()
    backplane = RedisBackplane.from_url(redis_url, channel=f"obs:{uuid.uuid4().hex}")
    seen: list[Event] = []
    cache = TieredCache(
        MemoryBackend(timer=clock),
        MemoryBackend(timer=clock),
        backplane=backplane,
    )
    with cache:
        cache.events.subscribe(BACKPLANE_RESET, seen.append)
        cache.events.subscribe(STALE_SERVED, seen.append)
        assert backplane.wait_connected(PATIENCE)
        assert wait_until(lambda: backplane.stats()["resets"] >= 1, PATIENCE)
        cache.get_or_set("k", lambda: "v1", ttl=10, stale_ttl=100)
        clock.advance(20)
        assert cache.get_or_set("k", lambda: "v2", ttl=10, stale_ttl=100) == "v1"
        assert Event(STALE_SERVED, {"key": "k"}) in seen
        cache.drain(PATIENCE)
    # The reset at subscription may come before or after the subscribe() above.
    assert all(e.name in (BACKPLANE_RESET, STALE_SERVED) for e in seen)


# == reset =====================================================================================


def test_reset_stats_zeroes_the_composition_and_each_layer(redis_url: str) -> None:
    with TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url, prefix="obs:")) as cache:
        cache.set("a", 1)
        cache.l1.delete("a")
        assert cache.get("a") == 1 and cache.get("a") == 1 and cache.get("nope") is None
        before = cache.stats()
        assert before["hits"] == 2 and before["l2"]["hits"] == 1 and before["l1"]["sets"] == 2
        cache.reset_stats()
        after = cache.stats()
        for tier in (after, after["l1"], after["l2"]):
            assert all(tier[n] == 0 for n in ("hits", "misses", "errors", "sets", "deletes"))
        assert after["refills"] == 0 and after["l2_reads_led"] == 0
        assert cache.get("a") == 1
        assert cache.stats()["l1_hits"] == 1 and cache.stats()["l1"]["hits"] == 1


# == exporters =================================================================================


@pytest.fixture
def busy_cache(redis_url: str) -> t.Iterator[TieredCache]:
    backplane = RedisBackplane.from_url(redis_url, channel=f"obs:{uuid.uuid4().hex}")
    cache = TieredCache(
        MemoryBackend(),
        RedisBackend.from_url(redis_url, prefix="obs:"),
        backplane=backplane,
    )
    with cache:
        assert backplane.wait_connected(PATIENCE)
        for i in range(20):
            cache.set(f"k{i}", i, ttl=60)
        cache.l1.delete_many([f"k{i}" for i in range(5)])
        for i in range(30):
            cache.get(f"k{i}")
        cache.delete("k0")
        cache.get_many(["k1", "k2", "missing"])
        assert cache.wait_idle(PATIENCE)
        # Every message this cache sent has come back (and was ignored as its own), so no
        # counter moves while a test compares two readings.
        assert wait_until(
            lambda: (
                cache.stats()["backplane"]["ignored_own"]
                >= cache.stats()["backplane"]["published"]
                >= 2
            ),
            PATIENCE,
        )
        yield cache


def expected(cache: TieredCache) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(f.name, f.labels): f.value for f in figures(cache)}


def test_prometheus_reports_what_stats_says(busy_cache: TieredCache) -> None:
    registry = CollectorRegistry()
    registry.register(TieredCacheCollector(busy_cache, name="main"))
    stats = busy_cache.stats()
    want = expected(busy_cache)
    for (name, labels), value in want.items():
        kind = (
            "_total"
            if any(f.name == name and f.kind == COUNTER for f in figures(busy_cache))
            else ""
        )
        sample = registry.get_sample_value(
            f"tieredcache_{name}{kind}", {"cache": "main", **dict(labels)}
        )
        assert sample == value, (name, labels)
    get = registry.get_sample_value
    assert get("tieredcache_hits_total", {"cache": "main", "tier": "tiered"}) == stats["hits"]
    assert get("tieredcache_hits_total", {"cache": "main", "tier": "l2"}) == stats["l2"]["hits"]
    assert get("tieredcache_misses_total", {"cache": "main", "tier": "l1"}) == stats["l1"]["misses"]
    assert get("tieredcache_sets_total", {"cache": "main", "tier": "tiered"}) == 20
    assert get("tieredcache_backplane_connected", {"cache": "main"}) == 1
    assert stats["hits"] == 22 and stats["l2_hits"] == 5


def test_opentelemetry_reports_what_stats_says(busy_cache: TieredCache) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(busy_cache, meter_provider=provider, name="main")
        data = reader.get_metrics_data()
        got = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    assert metric.name.startswith("tieredcache.")
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes)
                        assert attributes.pop("cache") == "main"
                        key = (metric.name[len("tieredcache.") :], tuple(attributes.items()))
                        got[key] = point.value
        want = expected(busy_cache)
        assert got == want
        stats = busy_cache.stats()
        assert got[("hits", (("tier", "tiered"),))] == stats["hits"]
        assert got[("hits", (("tier", "l1"),))] == stats["l1"]["hits"]
    finally:
        provider.shutdown()


# == spans =====================================================================================


def test_spans_wrap_l2_calls_and_loaders_only_when_asked(redis_url: str) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    with TieredCache(MemoryBackend(), RedisBackend.from_url(redis_url, prefix="obs:")) as cache:
        try:
            instrument(cache, meter_provider=meter_provider, name="c")
            cache.get("a")
            assert exporter.get_finished_spans() == ()
            instrument(
                cache,
                meter_provider=meter_provider,
                name="c",
                spans=True,
                tracer_provider=tracer_provider,
            )
            cache.get("b")
            assert cache.get_or_set("c", lambda: 3) == 3
            names = [span.name for span in exporter.get_finished_spans()]
            assert "tieredcache.l2.get_entry" in names and "tieredcache.load" in names
            assert "tieredcache.l2.add_entry" in names  # a fill after a miss is an add
        finally:
            meter_provider.shutdown()
            tracer_provider.shutdown()
