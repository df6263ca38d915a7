"""
OpenTelemetry
=============

:func:`instrument` reports a composition's figures (:mod:`.figures`) as OpenTelemetry
metrics: observable counters and gauges whose callbacks read ``cache.stats()`` when the
SDK collects, so cache calls pay nothing for them::

    from tieredcache.contrib.opentelemetry import instrument

    instrument(cache, name="default")            # the global MeterProvider
    instrument(cache, name="default", spans=True)  # and a span per L2 call and loader

Instrument names start with ``tieredcache.``; every point has a ``cache`` attribute (the
``name`` given) beside the figure's own. With ``spans=True`` every L2 call
(``tieredcache.l2.<method>``) and every ``get_or_set`` loader (``tieredcache.load``) runs in
a span; without it nothing wraps the cache's calls. Install with
``pip install tieredcache[otel]``.
"""

from __future__ import annotations

import threading
import typing as t

from tieredcache import __version__
from tieredcache.contrib.figures import COUNTER
from tieredcache.contrib.figures import DESCRIPTIONS
from tieredcache.contrib.figures import figures
from tieredcache.errors import ConfigurationError

try:
    from opentelemetry import metrics
    from opentelemetry import trace
    from opentelemetry.metrics import CallbackOptions
    from opentelemetry.metrics import Observation
except ImportError as exc:  # pragma: no cover - an optional extra
    raise ConfigurationError(
        "tieredcache.contrib.opentelemetry needs opentelemetry-api: pip install 'tieredcache[otel]'"
    ) from exc

if t.TYPE_CHECKING:
    import tieredcache

__all__ = ["PREFIX", "Instrumentation", "instrument"]

PREFIX = "tieredcache."
"""The start of every instrument name."""


class Instrumentation:
    """What :func:`instrument` created for one cache."""

    def __init__(self, cache: tieredcache.TieredCache, name: str, instruments: list[t.Any]) -> None:
        self.cache = cache
        self.name = name
        self.instruments = instruments


def instrument(
    cache: tieredcache.TieredCache,
    *,
    meter_provider: t.Any = None,
    name: str | None = None,
    spans: bool = False,
    tracer_provider: t.Any = None,
) -> Instrumentation:
    """Report ``cache``'s figures through OpenTelemetry (see the module docstring).

    :param meter_provider: the ``MeterProvider`` (default: the global one).
    :param name: the ``cache`` attribute of every point (default ``"default"``).
    :param spans: also trace every L2 call and loader (opt-in).
    :param tracer_provider: the ``TracerProvider`` for spans (default: the global one).
    :raises ConfigurationError: ``name`` is not a non-empty str.
    """
    label = "default" if name is None else name
    if not isinstance(label, str) or not label:
        raise ConfigurationError("name must be a non-empty str")
    with _lock:
        key = id(meter_provider) if meter_provider is not None else None
        observed = _observed.get(key)
        if observed is None:
            observed = _observed[key] = _Observed(meter_provider)
        observed.caches[label] = cache
    if spans:
        _trace(cache, label, trace.get_tracer("tieredcache", __version__, tracer_provider))
    return Instrumentation(cache, label, observed.instruments)


class _Observed:
    """The instruments of one meter provider, observing every cache instrumented on it
    (an SDK keeps the first instrument of a name, so each is created once)."""

    def __init__(self, meter_provider: t.Any) -> None:
        self.caches: dict[str, tieredcache.TieredCache] = {}
        meter = metrics.get_meter("tieredcache", __version__, meter_provider=meter_provider)
        self.instruments: list[t.Any] = []
        for metric, (kind, _, text) in DESCRIPTIONS.items():
            create = (
                meter.create_observable_counter
                if kind == COUNTER
                else meter.create_observable_gauge
            )
            self.instruments.append(
                create(PREFIX + metric, callbacks=[_observer(self, metric)], description=text)
            )


_lock = threading.Lock()
_observed: dict[int | None, _Observed] = {}


def _observer(
    observed: _Observed, metric: str
) -> t.Callable[[CallbackOptions], t.Iterable[Observation]]:
    def observe(options: CallbackOptions) -> t.Iterable[Observation]:
        with _lock:
            caches = list(observed.caches.items())
        return [
            Observation(figure.value, {"cache": label, **dict(figure.labels)})
            for label, cache in caches
            for figure in figures(cache)
            if figure.name == metric
        ]

    return observe


def _trace(cache: tieredcache.TieredCache, label: str, tracer: t.Any) -> None:
    def l2_call(method: str, call: t.Callable[[], t.Any]) -> t.Any:
        with tracer.start_as_current_span(
            f"{PREFIX}l2.{method}", attributes={"tieredcache.cache": label}
        ):
            return call()

    def load(key: str, call: t.Callable[[], t.Any]) -> t.Any:
        with tracer.start_as_current_span(
            f"{PREFIX}load", attributes={"tieredcache.cache": label, "tieredcache.key": key}
        ):
            return call()

    cache.wrap_calls(l2=l2_call, loader=load)
