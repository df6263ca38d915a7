"""The figures a metrics exporter reports for one composition, read from ``stats()``.

Both :mod:`tieredcache.contrib.prometheus` and :mod:`tieredcache.contrib.opentelemetry` turn
the same list into their own instruments, so they always agree with each other and with
:meth:`TieredCache.stats() <tieredcache.TieredCache.stats>`. Nothing here runs on a cache
call: the exporters read the figures when they are scraped or collected.

Names have no prefix and no unit suffix; each exporter adds its own (Prometheus:
``tieredcache_`` and ``_total`` on counters; OpenTelemetry: ``tieredcache.``).
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    import tieredcache

__all__ = ["BREAKER_STATES", "COUNTER", "GAUGE", "Figure", "describe", "figures"]

COUNTER = "counter"
GAUGE = "gauge"

#: The value of the ``breaker_state`` gauge for each breaker state.
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


class Figure(t.NamedTuple):
    """One sample: a metric name, its kind, its labels and its value."""

    name: str
    kind: str  # COUNTER or GAUGE
    labels: tuple[tuple[str, str], ...]
    value: float


#: name -> (kind, label names, help text)
DESCRIPTIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "hits": (COUNTER, ("tier",), "Lookups answered, per tier (tiered: the composition)"),
    "misses": (COUNTER, ("tier",), "Lookups not answered, per tier"),
    "errors": (COUNTER, ("tier",), "Lookups and writes that failed, per tier"),
    "sets": (COUNTER, ("tier",), "Keys written, per tier"),
    "deletes": (COUNTER, ("tier",), "Keys deleted, per tier"),
    "refills": (COUNTER, ("outcome",), "L2 hits copied into L1 (done, skipped, failed)"),
    "stale_served": (COUNTER, (), "Stale values served by get_or_set"),
    "refreshes": (COUNTER, ("outcome",), "Background refreshes (done, failed)"),
    "l2_reads": (COUNTER, ("mode",), "L2 reads of missed keys: led or shared with another"),
    "invalidations": (COUNTER, (), "Invalidations received from other processes"),
    "layer_errors": (COUNTER, ("tier", "operation"), "Layer failures absorbed by the policy"),
    "breaker_state": (GAUGE, (), "L2 circuit breaker: 0 closed, 1 half-open, 2 open"),
    "breaker_opened": (COUNTER, (), "Times the L2 circuit breaker opened"),
    "breaker_refused": (COUNTER, (), "L2 calls refused by the open breaker"),
    "replay_pending": (GAUGE, (), "Failed L2 writes waiting for replay"),
    "replayed": (COUNTER, ("outcome",), "Queued L2 writes replayed, dropped or superseded"),
    "announce_pending": (GAUGE, (), "Keys waiting to be announced on the backplane"),
    "offload_pending": (GAUGE, (), "Background tasks waiting or running in the offload"),
    "offload_tasks": (COUNTER, ("outcome",), "Background tasks by outcome"),
    "backplane_messages": (COUNTER, ("event",), "Backplane messages by event"),
    "backplane_resets": (COUNTER, (), "L1 flushes after missed invalidations"),
    "backplane_errors": (COUNTER, (), "Backplane errors (publish, malformed, callback, link)"),
    "backplane_connected": (GAUGE, (), "1 while the backplane's subscription is active"),
}


def describe(name: str) -> tuple[str, tuple[str, ...], str]:
    """``(kind, label names, help)`` of the figure ``name``."""
    return DESCRIPTIONS[name]


def figures(cache: tieredcache.TieredCache, stats: dict[str, t.Any] | None = None) -> list[Figure]:
    """Every figure of ``cache`` (from ``stats``, by default a fresh ``cache.stats()``)."""
    if stats is None:
        stats = cache.stats()
    found: list[Figure] = []

    def add(name: str, value: t.Any, **labels: str) -> None:
        kind = DESCRIPTIONS[name][0]
        found.append(Figure(name, kind, tuple(labels.items()), float(value or 0)))

    for tier, source in (("tiered", stats), ("l1", stats["l1"]), ("l2", stats["l2"])):
        for name in ("hits", "misses", "errors", "sets", "deletes"):
            add(name, source.get(name, 0), tier=tier)
    add("refills", stats["refills"], outcome="done")
    add("refills", stats["refills_skipped"], outcome="skipped")
    add("refills", stats["refill_errors"], outcome="failed")
    add("stale_served", stats["stale_hits"])
    add("refreshes", stats["refreshes"], outcome="done")
    add("refreshes", stats["refresh_errors"], outcome="failed")
    add("l2_reads", stats.get("l2_reads_led", 0), mode="led")
    add("l2_reads", stats.get("l2_reads_shared", 0), mode="shared")
    add("invalidations", stats["invalidations_received"])
    for tier in ("l1", "l2"):
        for operation in ("read", "write"):
            add("layer_errors", stats[f"{tier}_{operation}_errors"], tier=tier, operation=operation)
    breaker = stats.get("breaker")
    if breaker is not None:
        add("breaker_state", BREAKER_STATES.get(breaker["state"], 0))
        add("breaker_opened", breaker["times_opened"])
        add("breaker_refused", breaker["refused"])
    add("replay_pending", stats["replay_pending"])
    add("replayed", stats["replayed"], outcome="done")
    add("replayed", stats["replay_dropped"], outcome="dropped")
    add("replayed", stats["replay_superseded"], outcome="superseded")
    add("announce_pending", stats["announce_pending"])
    offload = stats.get("offload")
    if offload is None:
        offload = cache.offload.stats()
    add("offload_pending", offload.pending + offload.running)
    for outcome in ("completed", "failed", "cancelled", "deduplicated", "rejected"):
        add("offload_tasks", getattr(offload, outcome), outcome=outcome)
    backplane = stats.get("backplane")
    if backplane is not None:
        for event in ("published", "received", "delivered", "ignored_own", "tracked"):
            add("backplane_messages", backplane.get(event, 0), event=event)
        add("backplane_resets", backplane.get("resets", 0))
        add("backplane_errors", backplane.get("errors", 0))
        add("backplane_connected", 1 if backplane.get("connected") else 0)
    return found
