"""The server harness starts, stops, pauses and restarts real processes, by PID."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import typing as t

import pytest

from tieredcache.testing.servers import ManagedServer
from tieredcache.testing.servers import MemcachedServer
from tieredcache.testing.servers import RedisServer
from tieredcache.testing.servers import ServerNotInstalledError
from tieredcache.testing.servers import ServerStartError
from tieredcache.testing.servers import free_port

# Generous bounds for things that should happen at once; short ones for "nothing happened yet".
PATIENCE = 5.0
SILENCE = 0.3


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def request(address: tuple[str, int], payload: bytes, timeout: float = PATIENCE) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(payload)
        return sock.recv(4096)


def redis_ping(server: RedisServer) -> bytes:
    return request((server.host, server.port), b"PING\r\n")


def memcached_version(server: MemcachedServer) -> bytes:
    return request(server.address, b"version\r\n")


def assert_refused(address: tuple[str, int]) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=PATIENCE).close()


def assert_hangs_then_answers(server: RedisServer | MemcachedServer, payload: bytes) -> bytes:
    """Pause *server*: a request goes unanswered; resume it: the same request is answered."""
    server.pause()
    assert server.is_paused()
    with socket.create_connection((server.host, server.port), timeout=PATIENCE) as sock:
        sock.sendall(payload)
        sock.settimeout(SILENCE)
        with pytest.raises(socket.timeout):
            sock.recv(4096)
        server.resume()
        assert not server.is_paused()
        sock.settimeout(PATIENCE)
        return sock.recv(4096)


# -- free_port -------------------------------------------------------------------------------


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- RedisServer -----------------------------------------------------------------------------


def test_redis_start_and_stop_by_pid(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    pid = server.pid
    workdir = server.workdir
    assert server.is_running() and pid_alive(pid)
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    assert (server.host, server.ping()) == ("127.0.0.1", True)
    assert redis_ping(server) == b"+PONG\r\n"

    server.stop()

    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert workdir is not None and not os.path.exists(workdir)
    assert_refused((server.host, server.port))
    with pytest.raises(RuntimeError):
        server.pid  # noqa: B018
    server.stop()  # idempotent


def test_redis_restart_keeps_the_port(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    port, old_pid = server.port, server.pid

    server.restart()

    assert server.port == port
    assert server.pid != old_pid and not pid_alive(old_pid)
    assert redis_ping(server) == b"+PONG\r\n"


def test_redis_kill_then_start_reuses_the_port(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    port, old_pid = server.port, server.pid
    # An open connection at kill time leaves the server's side of it in TIME_WAIT.
    with socket.create_connection((server.host, port), timeout=PATIENCE) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(4096) == b"+PONG\r\n"
        server.kill()
        assert sock.recv(4096) == b""

    assert not server.is_running() and not pid_alive(old_pid)
    assert_refused((server.host, port))

    server.start()

    assert server.port == port
    assert redis_ping(server) == b"+PONG\r\n"


def test_redis_pause_hangs_connections_until_resume(fresh_redis_server: RedisServer) -> None:
    assert assert_hangs_then_answers(fresh_redis_server, b"PING\r\n") == b"+PONG\r\n"
    assert fresh_redis_server.ping()


def test_redis_stop_works_while_paused(fresh_redis_server: RedisServer) -> None:
    pid = fresh_redis_server.pid
    fresh_redis_server.pause()
    fresh_redis_server.stop()
    assert not pid_alive(pid)


def test_redis_client_pause_delays_replies(fresh_redis_server: RedisServer) -> None:
    server = fresh_redis_server
    sent = threading.Event()
    answered = threading.Event()
    replies: list[bytes] = []

    def ping() -> None:
        with socket.create_connection((server.host, server.port), timeout=PATIENCE) as sock:
            sock.sendall(b"PING\r\n")
            sent.set()
            replies.append(sock.recv(4096))
            answered.set()

    server.client_pause(2000)  # long enough to outlast a slow start of the thread below
    worker = threading.Thread(target=ping)
    worker.start()
    try:
        assert sent.wait(PATIENCE)
        assert not answered.wait(SILENCE), "PING answered during CLIENT PAUSE"
        assert server.is_running()
        assert answered.wait(PATIENCE), "PING not answered after CLIENT PAUSE ended"
    finally:
        worker.join(PATIENCE)
    assert replies == [b"+PONG\r\n"]


def test_redis_stop_works_during_client_pause(fresh_redis_server: RedisServer) -> None:
    pid = fresh_redis_server.pid
    fresh_redis_server.client_pause(60_000)
    fresh_redis_server.stop(timeout=PATIENCE)
    assert not pid_alive(pid)


@pytest.mark.redis
def test_redis_as_context_manager() -> None:
    with RedisServer() as server:
        pid = server.pid
        assert redis_ping(server) == b"+PONG\r\n"
    assert not server.is_running() and not pid_alive(pid)


def test_redis_start_twice_is_an_error(fresh_redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        fresh_redis_server.start()


@pytest.mark.redis
def test_redis_bad_option_fails_with_the_log() -> None:
    server = RedisServer(extra_args=("--no-such-option", "1"))
    with pytest.raises(ServerStartError, match="no-such-option") as excinfo:
        server.start()
    assert not isinstance(excinfo.value, ServerNotInstalledError)
    assert not server.is_running() and server.workdir is None


@pytest.mark.redis
def test_redis_taken_port_fails_with_the_log() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = RedisServer(blocker.getsockname()[1])
        with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
            server.start()
    assert not server.is_running() and server.workdir is None


def test_redis_port_held_by_another_server_is_not_mistaken_for_ours(
    fresh_redis_server: RedisServer,
) -> None:
    intruder = RedisServer(fresh_redis_server.port)
    with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
        intruder.start()
    assert not intruder.is_running() and intruder.workdir is None
    assert fresh_redis_server.answering_pid() == fresh_redis_server.pid


# -- MemcachedServer -------------------------------------------------------------------------


def test_memcached_start_pause_resume_stop(fresh_memcached_server: MemcachedServer) -> None:
    server = fresh_memcached_server
    pid = server.pid
    assert server.address == ("127.0.0.1", server.port)
    assert memcached_version(server).startswith(b"VERSION ")
    assert server.answering_pid() == pid

    assert assert_hangs_then_answers(server, b"version\r\n").startswith(b"VERSION ")

    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert_refused(server.address)


def test_memcached_kill_then_start_reuses_the_port(
    fresh_memcached_server: MemcachedServer,
) -> None:
    server = fresh_memcached_server
    port, old_pid = server.port, server.pid
    server.kill()
    assert not pid_alive(old_pid)
    server.start()
    assert server.port == port
    assert memcached_version(server).startswith(b"VERSION ")


@pytest.mark.memcached
def test_memcached_max_item_size() -> None:
    with MemcachedServer(max_item_size="2m") as server:
        settings = request(server.address, b"stats settings\r\n")
    assert b"STAT item_size_max 2097152\r\n" in settings


# -- missing binaries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "package"), [(RedisServer, "redis-server"), (MemcachedServer, "memcached")]
)
def test_missing_binary_names_the_package(
    cls: type[RedisServer] | type[MemcachedServer], package: str
) -> None:
    server = cls(binary="definitely-not-installed-xyz")
    with pytest.raises(ServerNotInstalledError, match=f"apt-get install {package}") as excinfo:
        server.start()
    assert "definitely-not-installed-xyz" in str(excinfo.value)
    assert isinstance(excinfo.value, RuntimeError)
    assert str(pickle.loads(pickle.dumps(excinfo.value))) == str(excinfo.value)
    assert not server.is_running() and server.workdir is None


# -- clean-up at exit ------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.memcached
def test_servers_left_running_are_stopped_at_exit() -> None:
    script = textwrap.dedent(
        """
        from tieredcache.testing.servers import MemcachedServer, RedisServer
        redis, memcached = RedisServer(), MemcachedServer()
        redis.start()
        memcached.start()
        print(redis.pid, memcached.pid, redis.workdir, memcached.workdir, flush=True)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    redis_pid, memcached_pid, *workdirs = result.stdout.split()
    assert result.stderr == ""
    # The child stopped and reaped both servers before it exited.
    assert not pid_alive(int(redis_pid))
    assert not pid_alive(int(memcached_pid))
    assert not any(os.path.exists(path) for path in workdirs)


# -- the conftest fixtures -------------------------------------------------------------------


# Each fixture is used twice: the second run sees the first run's key only if no flush happened.
RUNS = pytest.mark.parametrize("run", ["first", "second"])


@RUNS
def test_redis_url_is_flushed_and_marked(
    run: str, redis_url: str, request: pytest.FixtureRequest
) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", b"x")
    assert request.node.get_closest_marker("redis") is not None


@RUNS
def test_memcached_servers_are_flushed_and_marked(
    run: str, memcached_servers: list[tuple[str, int]], request: pytest.FixtureRequest
) -> None:
    from pymemcache.client.base import Client

    client = Client(memcached_servers[0], connect_timeout=PATIENCE, timeout=PATIENCE)
    try:
        assert client.get("left-behind") is None
        client.set("left-behind", b"x")
    finally:
        client.close()
    assert request.node.get_closest_marker("memcached") is not None


def test_requires_own_server_lets_own_servers_through(
    redis_server: object, requires_own_server: t.Callable[[object], ManagedServer]
) -> None:
    if isinstance(redis_server, RedisServer):
        assert requires_own_server(redis_server) is redis_server
    else:
        with pytest.raises(pytest.skip.Exception, match="external server"):
            requires_own_server(redis_server)
