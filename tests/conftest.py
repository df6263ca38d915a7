"""Shared fixtures for the whole suite.

Sections: property tests, markers, servers (Redis, memcached). Add new sections below the
existing ones.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t
import urllib.parse

import pytest
from hypothesis import HealthCheck
from hypothesis import settings

from tieredcache.testing.install import cannot_install_reason
from tieredcache.testing.install import ensure_installed
from tieredcache.testing.install import missing_binaries
from tieredcache.testing.servers import ManagedServer
from tieredcache.testing.servers import MemcachedServer
from tieredcache.testing.servers import RedisServer
from tieredcache.testing.servers import ServerNotInstalledError

# == property tests ==========================================================================

# A property test asserts what the code does, not how fast: on a loaded machine one example can
# take longer than hypothesis's default deadline (200 ms), which would fail the test. Tests
# that set their own settings keep every field they do not set from this profile.
settings.register_profile(
    "tieredcache", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("tieredcache")

# == markers ==================================================================================

#: Tests that use any of these fixtures (directly or through another fixture) get the marker.
MARKER_FIXTURES: dict[str, frozenset[str]] = {
    "redis": frozenset({"redis_server", "redis_url", "fresh_redis_server"}),
    "memcached": frozenset({"memcached_server", "memcached_servers", "fresh_memcached_server"}),
}


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in setup.cfg; repeated here so --strict-markers works with any ini file.
    config.addinivalue_line(
        "markers", "redis: needs a redis-server; the session starts its own on a free port"
    )
    config.addinivalue_line(
        "markers", "memcached: needs memcached; the session starts its own on a free port"
    )
    config.addinivalue_line("markers", "slow: long-running test (stateful runs, timing, stress)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in MARKER_FIXTURES.items():
            if fixturenames & fixtures:
                item.add_marker(marker)
    _provide_servers(config, items)


# == servers ==================================================================================
#
# By default the session starts its own redis-server and memcached on free loopback ports and
# stops them by PID at the end. When a selected test needs a binary that is not installed, the
# session installs it first (tieredcache.testing.install: root and apt-get, once, under a file
# lock). Where it cannot (not root, no apt-get, TIEREDCACHE_NO_INSTALL=1, apt-get failed) it
# prints one line saying so and skips the tests marked ``redis`` / ``memcached`` with one
# reason, or stops the session when TIEREDCACHE_REQUIRE_SERVERS=1 (CI sets it).
# TIEREDCACHE_REDIS_URL / TIEREDCACHE_MEMCACHED_SERVERS point the suite at external servers
# instead; tests that must pause or kill a server then call ``requires_own_server(server)``,
# which skips them, or use the ``fresh_*`` fixtures, which still start a local server when the
# binary is there.

REDIS_URL_ENV = "TIEREDCACHE_REDIS_URL"
MEMCACHED_SERVERS_ENV = "TIEREDCACHE_MEMCACHED_SERVERS"
REQUIRE_SERVERS_ENV = "TIEREDCACHE_REQUIRE_SERVERS"

#: marker -> (binary the tests with that marker need, env var naming an external server)
SERVER_MARKERS: dict[str, tuple[str, str]] = {
    "redis": ("redis-server", REDIS_URL_ENV),
    "memcached": ("memcached", MEMCACHED_SERVERS_ENV),
}


@dataclasses.dataclass(frozen=True)
class MissingServers:
    """The markers whose tests this session skips, and the one reason it gives."""

    markers: frozenset[str]
    reason: str


MISSING_SERVERS = pytest.StashKey[MissingServers]()


def _provide_servers(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Install the binaries the selected tests need, or record why their tests are skipped."""
    needed = {
        marker: binary
        for marker, (binary, env_var) in SERVER_MARKERS.items()
        if not os.environ.get(env_var) and any(item.get_closest_marker(marker) for item in items)
    }
    if not missing_binaries(needed.values()):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)

    if not cannot_install_reason():
        say(f"installing {' and '.join(missing_binaries(needed.values()))} with apt-get ...")
    result = ensure_installed(needed.values())
    if not result.missing:
        return
    markers = frozenset(m for m, binary in needed.items() if binary in result.missing)
    count = sum(1 for item in items if any(item.get_closest_marker(m) for m in markers))
    what = " and ".join(result.missing)
    if os.environ.get(REQUIRE_SERVERS_ENV, "").strip() not in ("", "0"):
        raise pytest.UsageError(
            f"{what} not installed ({result.reason}) and {REQUIRE_SERVERS_ENV} is set"
        )
    say(f"{what} not installed ({result.reason}): skipping the {count} tests that need them")
    config.stash[MISSING_SERVERS] = MissingServers(
        markers, f"needs {what}, not installed ({result.reason})"
    )


def _skip_missing(missing: MissingServers) -> t.NoReturn:
    # One place, so that the summary groups every such skip on one line.
    pytest.skip(missing.reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    missing = item.config.stash.get(MISSING_SERVERS, None)
    if missing is not None and any(item.get_closest_marker(m) for m in missing.markers):
        _skip_missing(missing)


@dataclasses.dataclass(frozen=True)
class ExternalRedis:
    """A Redis server the suite did not start: it can be used, not paused or killed."""

    url: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> ExternalRedis:
        parts = urllib.parse.urlsplit(url)
        return cls(url=url, host=parts.hostname or "127.0.0.1", port=parts.port or 6379)


@dataclasses.dataclass(frozen=True)
class ExternalMemcached:
    """A memcached server the suite did not start: it can be used, not paused or killed."""

    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @classmethod
    def from_spec(cls, spec: str) -> ExternalMemcached:
        host, sep, port = spec.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise pytest.UsageError(f"{MEMCACHED_SERVERS_ENV} must be host:port, got {spec!r}")
        return cls(host=host, port=int(port))


AnyRedis = t.Union[RedisServer, ExternalRedis]
AnyMemcached = t.Union[MemcachedServer, ExternalMemcached]
_ServerT = t.TypeVar("_ServerT", bound=ManagedServer)


def _start_or_fail(server: _ServerT, env_var: str, config: pytest.Config) -> _ServerT:
    try:
        server.start()
    except ServerNotInstalledError as exc:
        message = str(exc)
    else:
        return server
    # Outside the except block, so that the report does not repeat the message as the
    # exception "during handling of which" another occurred.
    missing = config.stash.get(MISSING_SERVERS, None)
    if missing is not None and server.binary in message:
        _skip_missing(missing)  # a test that lacks its marker: skipped all the same
    if os.environ.get(env_var):
        pytest.skip(f"{message}; this test needs a local server it can pause or kill")
    pytest.fail(message, pytrace=False)


def _requires_own_server(server: object) -> ManagedServer:
    if not isinstance(server, ManagedServer):
        pytest.skip(
            f"needs a server the test session started itself (to pause, kill or restart it), "
            f"but the suite uses the external server {server!r} "
            f"(unset {REDIS_URL_ENV} / {MEMCACHED_SERVERS_ENV} to run it)"
        )
    return server


@pytest.fixture(scope="session")
def requires_own_server() -> t.Callable[[object], ManagedServer]:
    """``requires_own_server(server)`` skips the test unless the session started *server*."""
    return _requires_own_server


@pytest.fixture(scope="session")
def redis_server(pytestconfig: pytest.Config) -> t.Iterator[AnyRedis]:
    """The session's Redis: a :class:`RedisServer`, or :class:`ExternalRedis` from the env."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        yield ExternalRedis.from_url(url)
        return
    server = _start_or_fail(RedisServer(), REDIS_URL_ENV, pytestconfig)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memcached_server(pytestconfig: pytest.Config) -> t.Iterator[AnyMemcached]:
    """The session's memcached: a :class:`MemcachedServer`, or :class:`ExternalMemcached`."""
    spec = os.environ.get(MEMCACHED_SERVERS_ENV)
    if spec:
        yield ExternalMemcached.from_spec(spec)
        return
    server = _start_or_fail(MemcachedServer(), MEMCACHED_SERVERS_ENV, pytestconfig)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: AnyRedis) -> str:
    """URL of a database on the session's Redis, flushed before the test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return redis_server.url


@pytest.fixture
def memcached_servers(memcached_server: AnyMemcached) -> list[tuple[str, int]]:
    """``[(host, port)]`` of the session's memcached, flushed before the test."""
    from pymemcache.client.base import Client

    from tieredcache.backends.memcached_servers import flush_server

    client = Client(memcached_server.address, connect_timeout=5, timeout=5)
    try:
        flush_server(client)
    finally:
        client.close()
    return [memcached_server.address]


@pytest.fixture
def fresh_redis_server(pytestconfig: pytest.Config) -> t.Iterator[RedisServer]:
    """A Redis of the test's own, for tests that pause, kill or restart it; stopped after."""
    server = _start_or_fail(RedisServer(), REDIS_URL_ENV, pytestconfig)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_memcached_server(pytestconfig: pytest.Config) -> t.Iterator[MemcachedServer]:
    """A memcached of the test's own, for tests that pause, kill or restart it; stopped after."""
    server = _start_or_fail(MemcachedServer(), MEMCACHED_SERVERS_ENV, pytestconfig)
    try:
        yield server
    finally:
        server.stop()
