"""Copied by run.py next to cachelib's tests: its shared test classes on tieredcache's
backend, as test_redis_cache.py runs them on RedisCache and on a subclass with its own
serializer."""

import ast
import inspect

import pytest
from cachelib import BaseCache
from cachelib.serializers import BaseRedisSerializer
from clear import ClearTests
from common import CommonTests
from delete_many_with_prefix import DeleteManyWithPrefixTests
from has import HasTests
from serializer import SerializerTests

from tieredcache.contrib.flask import TieredCache


class SillySerializer(BaseRedisSerializer):
    def dumps(self, value):
        return repr(value).encode()

    def loads(self, bvalue):
        return None if bvalue is None else ast.literal_eval(bvalue.decode())


class CustomCache(TieredCache):
    serializer = SillySerializer()


@pytest.fixture(autouse=True, params=[TieredCache, CustomCache])
def cache_factory(request, key_prefix, tc_location):
    def _factory(self, *args, **kwargs):
        kwargs.setdefault("key_prefix", key_prefix)
        cache = request.param(tc_location, *args, **kwargs)
        cache.clear()
        return cache

    request.cls.cache_factory = _factory


class TestTieredCache(
    CommonTests, ClearTests, HasTests, DeleteManyWithPrefixTests, SerializerTests
):
    def test_has_all_base_methods(self):
        # test_interface_uniformity.py's check, for this class
        cache = self.cache_factory()
        for name, _ in inspect.getmembers(BaseCache, predicate=inspect.isfunction):
            if not name.startswith("_"):
                assert callable(getattr(cache, name))
