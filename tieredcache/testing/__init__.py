"""Helpers for testing code that uses tieredcache, shipped with the package.

- :mod:`tieredcache.testing.contract`: ``BackendContract``, the pytest suite every backend
  passes; subclass it to check a backend of your own.
- :mod:`tieredcache.testing.clock`: ``FakeClock`` (time that tests move by hand) and
  ``wait_until`` (a bounded wait for a condition).
- :mod:`tieredcache.testing.faults`: ``FaultyBackend`` (fail or hold any operation of a
  layer) and ``ManualExecutor`` (run queued legs when, and in the order, a test chooses).
- :mod:`tieredcache.testing.backplane`: ``LocalBackplaneHub``, an in-process backplane whose
  messages wait until the test delivers them (several compositions as several processes).
- :mod:`tieredcache.testing.servers`: throwaway ``redis-server`` and ``memcached`` processes
  on free loopback ports, for tests, benchmarks and demos.
- :mod:`tieredcache.testing.install`: installs ``redis-server`` and ``memcached`` with apt-get
  when they are missing and the process may (root, ``TIEREDCACHE_NO_INSTALL`` unset).
- :mod:`tieredcache.testing.cluster`: a throwaway Redis Cluster of several masters.
"""
