"""Turning on metrics for the caches the framework integrations build.

Django (``OPTIONS: {"METRICS": "prometheus"}``, and ``"METRICS_NAME"``) and Flask
(``TIEREDCACHE_METRICS``, ``TIEREDCACHE_METRICS_NAME``) call :func:`enable_metrics` on each
cache they configure: ``"prometheus"`` adds it to one process-wide
:class:`~tieredcache.contrib.prometheus.TieredCacheCollector` registered in
``prometheus_client.REGISTRY``; ``"opentelemetry"`` (or ``"otel"``) calls
:func:`~tieredcache.contrib.opentelemetry.instrument` with the global meter provider. A cache
shared by several aliases is reported once per name.
"""

from __future__ import annotations

import threading
import typing as t

from tieredcache.errors import ConfigurationError

if t.TYPE_CHECKING:
    import tieredcache

__all__ = ["METRICS", "enable_metrics", "split_metrics"]

METRICS = ("prometheus", "opentelemetry", "otel")
"""The accepted values of the ``METRICS`` option (``None`` or ``""``: off)."""

_lock = threading.Lock()
_collector: t.Any = None
_enabled: dict[tuple[str, str], tieredcache.TieredCache] = {}


def split_metrics(
    options: t.Mapping[str, t.Any],
) -> tuple[dict[str, t.Any], str | None, str | None]:
    """``(options without them, METRICS, METRICS_NAME)``; names are case-insensitive.

    :raises ConfigurationError: an unknown ``METRICS`` value.
    """
    rest: dict[str, t.Any] = {}
    kind = name = None
    for key, value in options.items():
        lowered = key.lower() if isinstance(key, str) else key
        if lowered == "metrics":
            kind = value or None
        elif lowered == "metrics_name":
            name = value
        else:
            rest[key] = value
    if kind is not None and kind not in METRICS:
        raise ConfigurationError(
            f"METRICS must be one of {', '.join(METRICS)} (or None), not {kind!r}"
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(f"METRICS_NAME must be a non-empty str, not {name!r}")
    return rest, kind, name


def enable_metrics(
    cache: tieredcache.TieredCache, kind: str | None, name: str | None = None
) -> None:
    """Report ``cache`` through ``kind`` under ``name`` (default ``"default"``); idempotent.

    :raises ConfigurationError: an unknown ``kind``, or its library is not installed.
    """
    global _collector
    if kind is None:
        return
    label = name or "default"
    with _lock:
        if kind not in METRICS:
            raise ConfigurationError(f"METRICS must be one of {', '.join(METRICS)}")
        family = "prometheus" if kind == "prometheus" else "opentelemetry"
        if _enabled.get((family, label)) is cache:
            return
        if (family, label) in _enabled:
            raise ConfigurationError(
                f"two different caches would report metrics as {label!r}: set METRICS_NAME"
            )
        if family == "prometheus":
            from prometheus_client import REGISTRY

            from tieredcache.contrib.prometheus import TieredCacheCollector

            if _collector is None:
                _collector = TieredCacheCollector()
                REGISTRY.register(_collector)
            _collector.add(cache, label)
        else:
            from tieredcache.contrib.opentelemetry import instrument

            instrument(cache, name=label)
        _enabled[(family, label)] = cache
