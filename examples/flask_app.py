"""A small Flask app cached by tieredcache.

Run it with the embedded default (an in-process L1 in front of a SQLite file)::

    python examples/flask_app.py

or with Redis as the shared L2::

    TIEREDCACHE_LOCATION=redis://127.0.0.1:6379/0 python examples/flask_app.py

then open http://127.0.0.1:5000/. ``create_app(config)`` is an app factory: tests and
other scripts call it with their own config.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
import typing as t

from flask import Flask
from flask import jsonify

try:
    from tieredcache.contrib.flask import TieredCacheExtension
except ImportError:  # run from a source checkout without installing tieredcache
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from tieredcache.contrib.flask import TieredCacheExtension

try:
    from flask_caching import Cache
except ImportError:  # Flask-Caching is optional: the /clock view needs it
    Cache = None

#: One extension object for every app the factory makes: its state lives in each app.
tiered = TieredCacheExtension()

#: Flask-Caching, when installed, with tieredcache as its backend.
cache = Cache() if Cache is not None else None


def slow_square(n: int) -> int:
    """Stands for an expensive computation or a slow query."""
    time.sleep(0.2)
    return n * n


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Build the app; ``config`` overrides the defaults and the environment."""
    app = Flask(__name__)
    app.config.from_mapping(
        # Signs what the app stores in the shared L2; set a real secret in production.
        SECRET_KEY=os.environ.get("SECRET_KEY", "change-me"),
        # None: the embedded default. Or redis://..., memcached://host:port, sqlite:///path.
        TIEREDCACHE_LOCATION=os.environ.get("TIEREDCACHE_LOCATION") or None,
        TIEREDCACHE_DEFAULT_TTL=60,
        TIEREDCACHE_KEY_PREFIX="example:",
        TIEREDCACHE_OPTIONS={"l1_maxsize": 1000, "l1_ttl": 30},
    )
    if config:
        app.config.update(config)
    tiered.init_app(app)

    @app.get("/")
    def index() -> t.Any:
        tiered.add("visits", 0, ttl=None)
        return jsonify(visits=tiered.incr("visits"))

    @app.get("/square/<int:n>")
    def square(n: int) -> t.Any:
        started = time.perf_counter()
        value = tiered.get_or_set(f"square:{n}", lambda: slow_square(n))
        return jsonify(n=n, square=value, ms=round((time.perf_counter() - started) * 1000, 1))

    @app.get("/stats")
    def stats() -> t.Any:
        figures = tiered.cache.stats()
        return jsonify({k: figures[k] for k in ("hits", "misses", "l1_hits", "l2_hits", "sets")})

    if cache is not None:
        cache.init_app(
            app,
            config={
                "CACHE_TYPE": "tieredcache.contrib.flask.TieredCache",
                "CACHE_TIEREDCACHE_LOCATION": app.config["TIEREDCACHE_LOCATION"],
                "CACHE_DEFAULT_TIMEOUT": 60,
                "CACHE_KEY_PREFIX": "example-view:",
                "CACHE_OPTIONS": app.config["TIEREDCACHE_OPTIONS"],
            },
        )

        @app.get("/clock")
        @cache.cached(timeout=5)
        def clock() -> t.Any:
            # Computed at most once every 5 seconds; other requests get the cached response.
            return jsonify(computed_at=time.time())

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
