"""The METRICS option of the Django backend and TIEREDCACHE_METRICS of the Flask extension."""

from __future__ import annotations

import typing as t

import flask
import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from prometheus_client import REGISTRY

from tests.contrib.test_django import configure_django
from tieredcache.config import release_shared_caches
from tieredcache.contrib.flask import TieredCacheExtension
from tieredcache.errors import ConfigurationError

BACKEND = "tieredcache.contrib.django.TieredCache"


@pytest.fixture(autouse=True)
def fresh_caches() -> t.Iterator[None]:
    configure_django()
    yield
    release_shared_caches()


def sample(metric: str, cache: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"cache": cache, **labels})


def test_django_reports_every_configured_cache_to_prometheus() -> None:
    entry = {"BACKEND": BACKEND, "LOCATION": "memory://metrics-a"}
    with override_settings(
        CACHES={
            "default": {**entry, "OPTIONS": {"METRICS": "prometheus", "METRICS_NAME": "dj-a"}},
            "other": {
                "BACKEND": BACKEND,
                "LOCATION": "memory://metrics-b",
                "OPTIONS": {"metrics": "prometheus", "metrics_name": "dj-b"},
            },
        }
    ):
        caches["default"].set("k", 1)
        caches["other"].set("k", 1)
        caches["other"].set("j", 2)
        assert sample("tieredcache_sets_total", "dj-a", tier="tiered") == 1
        assert sample("tieredcache_sets_total", "dj-b", tier="tiered") == 2


def test_django_refuses_an_unknown_metrics_value() -> None:
    entry = {"BACKEND": BACKEND, "LOCATION": "memory://x", "OPTIONS": {"METRICS": "statsd"}}
    with (
        override_settings(CACHES={"default": entry}),
        pytest.raises(ImproperlyConfigured, match="METRICS must be one of"),
    ):
        caches["default"].get("k")


def test_flask_reports_its_cache() -> None:
    app = flask.Flask("metrics")
    app.config.update(
        TIEREDCACHE_LOCATION="memory://flask-metrics",
        TIEREDCACHE_METRICS="opentelemetry",
        TIEREDCACHE_METRICS_NAME="fl",
    )
    TieredCacheExtension(app)
    bad = flask.Flask("bad")
    bad.config.update(TIEREDCACHE_LOCATION="memory://flask-bad", TIEREDCACHE_METRICS="nope")
    with pytest.raises(ConfigurationError, match="METRICS must be one of"):
        TieredCacheExtension(bad)


def test_flask_caching_reports_its_cache() -> None:
    from flask_caching import Cache

    app = flask.Flask("metrics-fc")
    app.config.update(
        CACHE_TYPE="tieredcache.contrib.flask.TieredCache",
        CACHE_TIEREDCACHE_LOCATION="memory://flask-caching-metrics",
        CACHE_TIEREDCACHE_METRICS="prometheus",
        CACHE_TIEREDCACHE_METRICS_NAME="fc",
    )
    cache = Cache(app)
    with app.app_context():
        cache.set("k", 1)
        cache.set("j", 2)
        assert cache.get("k") == 1
    assert sample("tieredcache_sets_total", "fc", tier="tiered") == 2
    bad = flask.Flask("bad-fc")
    bad.config.update(
        CACHE_TYPE="tieredcache.contrib.flask.TieredCache",
        CACHE_TIEREDCACHE_LOCATION="memory://flask-caching-bad",
        CACHE_TIEREDCACHE_METRICS="nope",
    )
    with pytest.raises(ConfigurationError, match="METRICS must be one of"):
        Cache(bad)
