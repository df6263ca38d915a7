"""Helpers for testing code that uses tieredcache, shipped with the package.

- :mod:`tieredcache.testing.servers`: throwaway ``redis-server`` and ``memcached`` processes
  on free loopback ports, for tests, benchmarks and demos.
"""
