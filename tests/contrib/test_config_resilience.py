"""The resilience options of the integrations' shared builder (Django OPTIONS, Flask config)."""

from __future__ import annotations

import typing as t

import pytest

from tieredcache import ConfigurationError
from tieredcache.config import build_cache
from tieredcache.testing.clock import wait_until


def test_defaults_give_a_breaker_and_fail_closed(redis_url: str) -> None:
    cache = build_cache(redis_url)
    try:
        figures = cache.stats()
        assert figures["fail_open"] is False
        assert figures["breaker"]["state"] == "closed"
        assert cache.backplane is None and cache.jitter == 0.0
    finally:
        cache.close()


def test_resilience_options_are_applied(redis_url: str) -> None:
    options = {
        "FAIL_OPEN": True,
        "BREAKER_FAILURES": 2,
        "BREAKER_RESET_AFTER": 1.5,
        "JITTER": 0.1,
        "BACKPLANE": True,
        "BACKPLANE_CHANNEL": "app:invalidate",
    }
    first, second = build_cache(redis_url, options), build_cache(redis_url, options)
    try:
        assert first.stats()["fail_open"] is True
        breaker = first.breaker
        assert (breaker.failures, breaker.reset_after) == (2, 1.5)
        assert first.jitter == 0.1
        assert first.backplane.wait_connected(5) and second.backplane.wait_connected(5)
        first.set("k", "v1")
        assert second.get("k") == "v1"
        first.set("k", "v2")
        assert wait_until(lambda: second.l1.get("k") != "v1", 5)  # evicted or updated
        assert second.get("k") == "v2"
    finally:
        first.close()
        second.close()


def test_breaker_can_be_turned_off(redis_url: str) -> None:
    cache = build_cache(redis_url, {"breaker_failures": None})
    try:
        assert "breaker" not in cache.stats()
    finally:
        cache.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fail_open": "yes"}, "fail_open"),
        ({"breaker_failures": 0}, "breaker_failures"),
        ({"breaker_reset_after": -1}, "breaker_reset_after"),
        ({"jitter": 1.5}, "jitter"),
        ({"backplane": 3}, "backplane"),
        ({"backplane_channel": ""}, "backplane_channel"),
    ],
)
def test_bad_resilience_options(redis_url: str, options: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_cache(redis_url, options)


def test_backplane_true_needs_a_redis_location(tmp_path: t.Any) -> None:
    with pytest.raises(ConfigurationError, match="backplane"):
        build_cache(f"sqlite://{tmp_path}/c.sqlite3", {"backplane": True})


def test_backplane_url_with_another_l2(tmp_path: t.Any, redis_url: str) -> None:
    cache = build_cache(f"sqlite://{tmp_path}/c.sqlite3", {"backplane": redis_url})
    try:
        assert cache.backplane is not None and cache.backplane.wait_connected(5)
    finally:
        cache.close()
