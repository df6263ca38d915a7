"""Views of the example site: the low-level cache API and ``cache_page``."""

from __future__ import annotations

import time

from django.core.cache import cache
from django.http import HttpRequest
from django.http import JsonResponse
from django.views.decorators.cache import cache_page


def slow_square(n: int) -> int:
    """Stands for an expensive computation or a slow query."""
    time.sleep(0.2)
    return n * n


def index(request: HttpRequest) -> JsonResponse:
    """A visit counter shared by every process on the same L2: ``add`` then ``incr``."""
    cache.add("visits", 0, timeout=None)
    return JsonResponse(
        {
            "visits": cache.incr("visits"),
            "try": ["/square/12/", "/clock/"],
        }
    )


def square(request: HttpRequest, n: int) -> JsonResponse:
    """Slow the first time, then served from the cache: ``get`` then ``set`` on a miss."""
    started = time.perf_counter()
    key = f"square:{n}"
    value = cache.get(key)
    cached = value is not None
    if not cached:
        value = slow_square(n)
        cache.set(key, value, timeout=60)
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    return JsonResponse({"n": n, "square": value, "cached": cached, "ms": elapsed})


@cache_page(5)
def clock(request: HttpRequest) -> JsonResponse:
    """The whole response is cached for 5 seconds: the time stays the same meanwhile."""
    return JsonResponse({"computed_at": time.time()})
