"""Copied by run.py next to the upstream tests: the location of the L2 named by ``TC_L2``
(``redis``, ``memcached`` or ``sqlite``), on a server the session starts once."""

import atexit
import os

from tieredcache.testing.servers import MemcachedServer
from tieredcache.testing.servers import RedisServer

_servers: dict = {}


def location(tmp_path):
    kind = os.environ["TC_L2"]
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'cache.sqlite3'}"
    if kind not in _servers:
        server = RedisServer() if kind == "redis" else MemcachedServer()
        server.start()
        atexit.register(server.stop)
        _servers[kind] = server
    server = _servers[kind]
    if kind == "redis":
        return server.url
    host, port = server.address
    return f"memcached://{host}:{port}"
