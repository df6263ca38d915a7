"""Views of the test project; ``CALLS`` counts how often each view body really ran."""

import collections

from django.core.cache import cache
from django.http import HttpRequest
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_page

CALLS: collections.Counter = collections.Counter()


@cache_page(60)
def cached_page(request: HttpRequest) -> HttpResponse:
    CALLS["cached_page"] += 1
    return HttpResponse(f"cached page, computed {CALLS['cached_page']} time(s)")


def plain(request: HttpRequest) -> HttpResponse:
    CALLS["plain"] += 1
    return HttpResponse(f"plain page, computed {CALLS['plain']} time(s)")


def low_level(request: HttpRequest) -> HttpResponse:
    def expensive() -> dict:
        CALLS["expensive"] += 1
        return {"answer": 42}

    data = cache.get_or_set("expensive-report", expensive, 60)
    cache.add("visits", 0, None)
    visits = cache.incr("visits")
    return HttpResponse(f"answer={data['answer']} visits={visits}")


def fragment(request: HttpRequest) -> HttpResponse:
    def render_count() -> int:
        CALLS["fragment"] += 1
        return CALLS["fragment"]

    name = request.GET.get("name", "world")
    return render(request, "fragment.html", {"name": name, "render_count": render_count})


def session_counter(request: HttpRequest) -> HttpResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return HttpResponse(f"count={request.session['count']}")
