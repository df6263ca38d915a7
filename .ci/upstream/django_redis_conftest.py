# Appended by run.py to django-redis's tests/conftest.py: a redis-server of the session's
# own, on TCP and on a unix socket, that the settings modules point at.
import atexit as _atexit
import os as _os
import tempfile as _tempfile

from tieredcache.testing.servers import RedisServer as _RedisServer

_sock = _os.path.join(_tempfile.mkdtemp(prefix="tc-redis-"), "redis.sock")
_server = _RedisServer(extra_args=["--unixsocket", _sock, "--unixsocketperm", "700"])
_server.start()
_atexit.register(_server.stop)
_os.environ["TC_REDIS_PORT"] = str(_server.port)
_os.environ["TC_REDIS_SOCK"] = _sock
