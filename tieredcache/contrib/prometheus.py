"""
Prometheus
==========

:class:`TieredCacheCollector` reports a composition's figures (:mod:`.figures`) to
``prometheus_client``. It reads ``cache.stats()`` when Prometheus scrapes, so cache calls
pay nothing for it::

    from prometheus_client import REGISTRY
    from tieredcache.contrib.prometheus import TieredCacheCollector

    collector = TieredCacheCollector(cache, name="default")
    collector.add(other_cache, name="sessions")
    REGISTRY.register(collector)

Every metric name starts with ``tieredcache_`` and carries a ``cache`` label (the ``name``
given); counters end in ``_total``. Install with ``pip install tieredcache[prometheus]``.

**Several worker processes (gunicorn).** ``prometheus_client``'s multi-process mode
(``PROMETHEUS_MULTIPROC_DIR``) aggregates only the metric objects it writes to its own files;
a collector reads the live cache of the one process that answers the scrape. Under gunicorn,
give each worker its own scrape target: start ``prometheus_client.start_http_server(base +
worker.age)`` from a ``post_fork`` hook (each worker registers its caches' collectors in its
own registry), and let Prometheus sum across targets (``sum without (instance)``).
"""

from __future__ import annotations

import threading
import typing as t

from tieredcache.contrib.figures import COUNTER
from tieredcache.contrib.figures import DESCRIPTIONS
from tieredcache.contrib.figures import figures
from tieredcache.errors import ConfigurationError

try:
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - an optional extra
    raise ConfigurationError(
        "tieredcache.contrib.prometheus needs prometheus_client: "
        "pip install 'tieredcache[prometheus]'"
    ) from exc

if t.TYPE_CHECKING:
    import tieredcache

__all__ = ["PREFIX", "TieredCacheCollector"]

PREFIX = "tieredcache_"
"""The start of every metric name."""

Family = t.Union[CounterMetricFamily, GaugeMetricFamily]


class TieredCacheCollector(Collector):
    """A ``prometheus_client`` collector of compositions' figures. Thread-safe.

    Register one collector per registry and :meth:`add` every further cache to it (two
    collectors on one registry would report the same metric names twice).

    :param cache: the first composition (or ``None``: add them later).
    :param name: the value of its ``cache`` label (e.g. the Django cache alias).
    :raises ConfigurationError: ``name`` is not a non-empty str.
    """

    def __init__(self, cache: tieredcache.TieredCache | None = None, name: str = "default") -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, tieredcache.TieredCache] = {}
        if cache is not None:
            self.add(cache, name)

    def add(self, cache: tieredcache.TieredCache, name: str) -> None:
        """Report ``cache`` too, labelled ``cache=name`` (a name already used is replaced)."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError("name must be a non-empty str")
        with self._lock:
            self._caches[name] = cache

    def names(self) -> list[str]:
        """The ``cache`` labels reported."""
        with self._lock:
            return list(self._caches)

    def _families(self) -> dict[str, Family]:
        families: dict[str, Family] = {}
        for metric, (kind, labels, text) in DESCRIPTIONS.items():
            cls = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
            families[metric] = cls(PREFIX + metric, text, labels=["cache", *labels])
        return families

    def describe(self) -> t.Iterator[Family]:
        """The metric families, without samples (so registering does not scrape)."""
        yield from self._families().values()

    def collect(self) -> t.Iterator[Family]:
        """One ``stats()`` snapshot per cache, as metric families."""
        families = self._families()
        with self._lock:
            caches = list(self._caches.items())
        for name, cache in caches:
            for figure in figures(cache):
                labels = [name, *(value for _, value in figure.labels)]
                families[figure.name].add_metric(labels, figure.value)
        for family in families.values():
            if family.samples:
                yield family
