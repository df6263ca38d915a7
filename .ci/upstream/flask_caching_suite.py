"""Copied by run.py next to Flask-Caching's tests: its generic backend tests
(test_backend_cache.GenericCacheTests) on tieredcache's backend, as the suite runs them on
each of its own backends."""

import pytest
from test_backend_cache import GenericCacheTests

from tieredcache.contrib.flask import TieredCache


class TestTieredCache(GenericCacheTests):
    @pytest.fixture
    def make_cache(self, tc_location):
        return lambda: TieredCache(tc_location)
