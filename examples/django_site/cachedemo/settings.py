"""Settings of the example site.

The cache is tieredcache's Django backend. By default it runs on the embedded defaults, an
in-process L1 in front of a SQLite file in ``$XDG_CACHE_HOME/tieredcache/``, so no server is
needed; ``TIEREDCACHE_LOCATION=redis://127.0.0.1:6379/0`` (or ``memcached://host:port``,
``sqlite:///path``) puts a shared store behind it instead.
"""

from __future__ import annotations

import os

# Also signs what the cache stores in L2: set your own secret outside this example.
SECRET_KEY = os.environ.get("SECRET_KEY", "django-insecure-tieredcache-example")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "cachedemo.urls"
TEMPLATES: list[dict[str, object]] = []

# No database: the site only uses the cache.
DATABASES: dict[str, object] = {}

CACHES = {
    "default": {
        "BACKEND": "tieredcache.contrib.django.TieredCache",
        # Empty: the embedded default. Or redis://..., memcached://host:port, sqlite:///path.
        "LOCATION": os.environ.get("TIEREDCACHE_LOCATION", ""),
        "TIMEOUT": 300,
        "KEY_PREFIX": "cachedemo",
        "OPTIONS": {"L1_MAXSIZE": 1000, "L1_TTL": 30},
    }
}
