"""Settings of the test project; ``tests/contrib/test_django.py`` configures Django with them.

The caches point at ``memory://`` here; each test overrides ``CACHES`` with the servers the
test session started.
"""

import os

_PACKAGE = __name__.rpartition(".")[0]

SECRET_KEY = "tieredcache-test-project-secret-key"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost"]
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = f"{_PACKAGE}.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
        "APP_DIRS": False,
        "OPTIONS": {},
    }
]

DATABASES = {}

CACHES = {
    "default": {
        "BACKEND": "tieredcache.contrib.django.TieredCache",
        "LOCATION": "memory://",
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.cache"
SESSION_CACHE_ALIAS = "default"

CACHE_MIDDLEWARE_SECONDS = 60
CACHE_MIDDLEWARE_KEY_PREFIX = "site"
