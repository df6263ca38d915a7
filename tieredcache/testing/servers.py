"""Throwaway ``redis-server`` and ``memcached`` processes on free loopback ports.

The test suite, the benchmark CLI and the demo start their own servers with these classes, so
nothing depends on a server someone left running and failure tests may pause, kill and restart
the server they own::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        server.pause()       # SIGSTOP: connections hang, as with a stuck host
        server.resume()      # SIGCONT
        server.kill()        # SIGKILL: connections are refused
        server.start()       # the same port again

Every process is signalled by its PID, never by name. Children run in a session of their own,
so a Ctrl-C aimed at the parent does not race the clean-up, and an :mod:`atexit` hook stops
whatever is still running when the interpreter exits. Only the standard library is imported.

The classes need a POSIX system (signals, ``start_new_session``).

The process handling lives in :mod:`tieredcache.testing.managed`, the servers in
:mod:`tieredcache.testing.redis_server` and :mod:`tieredcache.testing.memcached_server`; this
module gathers them.
"""

from __future__ import annotations

from tieredcache.testing.managed import LOOPBACK
from tieredcache.testing.managed import ManagedServer
from tieredcache.testing.managed import PortInUseError
from tieredcache.testing.managed import ServerNotInstalledError
from tieredcache.testing.managed import ServerStartError
from tieredcache.testing.managed import free_port
from tieredcache.testing.memcached_server import MemcachedServer
from tieredcache.testing.redis_server import RedisServer

__all__ = [
    "LOOPBACK",
    "ManagedServer",
    "MemcachedServer",
    "PortInUseError",
    "RedisServer",
    "ServerNotInstalledError",
    "ServerStartError",
    "free_port",
]
