"""Redis URLs and clients: parsing connection URLs, building clients, describing them
without credentials, and mapping redis-py errors to :class:`~tieredcache.errors.BackendError`.

Every Redis user in the library (:class:`~tieredcache.backends.redis.RedisBackend`, the
backplane, :class:`~tieredcache.redis.lock.RedisLock`) builds its client here.
"""

from __future__ import annotations

import dataclasses
import typing as t
import urllib.parse

import redis
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import ConfigurationError

__all__ = [
    "DRIVER_ERRORS",
    "HEALTH_CHECK_INTERVAL",
    "REDIS_PORT",
    "SCHEMES",
    "SENTINEL_PORT",
    "UNAVAILABLE",
    "RedisTarget",
    "close_all",
    "connect",
    "connect_url",
    "decodes_responses",
    "describe",
    "parse_url",
    "redact",
    "translate",
]

SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
"""The URL schemes :func:`connect_url` (and every ``from_url``) accepts."""

SENTINEL_PORT = 26379
REDIS_PORT = 6379
HEALTH_CHECK_INTERVAL = 30

#: What redis-py raises: translated into ``BackendError`` at the backends' boundary.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)


# -- errors ---------------------------------------------------------------------------


# Failures of the server or of the way to it: the tier cannot answer now. A ConnectionError
# covers BusyLoadingError, AuthenticationError, MaxConnectionsError (pool exhausted),
# MaxClientsReachedError and MasterNotFoundError; InvalidResponse is a connection whose
# protocol stream broke; CLUSTERDOWN, MASTERDOWN and TRYAGAIN are a cluster that cannot serve
# the slot now, although they arrive as error replies.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.InvalidResponse,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
    OSError,
)


def translate(exc: BaseException, target: str) -> BackendError:
    """The most specific ``BackendError`` for a driver exception."""
    message = f"{type(exc).__name__}: {exc} ({target})"
    cls: type[BackendError]
    if isinstance(exc, (redis.exceptions.TimeoutError, TimeoutError)):
        cls = BackendTimeoutError
    elif isinstance(exc, UNAVAILABLE):
        cls = BackendUnavailableError
    elif isinstance(exc, redis.exceptions.ResponseError):
        # The server answered about this command (WRONGTYPE, OOM, READONLY, NOSCRIPT...):
        # that key's error, not a sign that the server is down.
        cls = BackendResponseError
    else:
        cls = BackendError  # a client-side error (DataError...): neither of the above
    return cls(message, backend="redis")


# -- URLs and clients -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RedisTarget:
    """A parsed connection URL."""

    #: ``"redis"`` (redis://, rediss://, unix://), ``"sentinel"`` or ``"cluster"``.
    kind: str
    #: The URL itself, for the kinds redis-py parses.
    url: str = dataclasses.field(default="", repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


def parse_url(url: str) -> RedisTarget:
    """Parse a connection URL (see :meth:`RedisBackend.from_url`).

    :raises ConfigurationError: an unsupported scheme or a malformed URL.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"the Redis URL must be a str, not {type(url).__name__}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("redis", url=url)
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise ConfigurationError(
            f"unsupported Redis URL {redact(url)!r}: the scheme must be one of "
            + ", ".join(SCHEMES)
        )
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"{scheme}:// URLs take no query string or fragment; pass options as keyword "
            f"arguments ({redact(url)!r})"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if has_password else None
    default_port = SENTINEL_PORT if scheme == "redis+sentinel" else REDIS_PORT
    nodes = tuple(_parse_host(spec, default_port, url) for spec in hostlist.split(","))
    segments = [urllib.parse.unquote(s) for s in parts.path.split("/") if s]
    if scheme == "redis+cluster":
        if segments not in ([], ["0"]):
            raise ConfigurationError(
                f"a Redis Cluster has only database 0; got the path {parts.path!r} "
                f"in {redact(url)!r}"
            )
        return RedisTarget("cluster", nodes=nodes, username=username, password=password)
    if not segments or len(segments) > 2:
        raise ConfigurationError(
            f"a sentinel URL needs /service_name[/db] after the hosts: {redact(url)!r}"
        )
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigurationError(f"the database must be a number, not {segments[1]!r}")
        db = int(segments[1])
    return RedisTarget(
        "sentinel",
        nodes=nodes,
        service_name=segments[0],
        db=db,
        username=username,
        password=password,
    )


def _parse_host(spec: str, default_port: int, url: str) -> tuple[str, int]:
    spec = spec.strip()
    if spec.startswith("["):  # [IPv6]:port
        host, _, rest = spec[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port_text = spec.partition(":")
    if not host:
        raise ConfigurationError(f"a host is missing in {redact(url)!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"bad port {port_text!r} in {redact(url)!r}")
    return host, int(port_text)


def redact(url: str) -> str:
    """``url`` without its password, query string and fragment (they may hold secrets)."""
    base = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = base.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at:
        return base
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


def _host_port(host: str, port: t.Any) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_url(url: str, options: dict[str, t.Any]) -> tuple[t.Any, list[t.Callable[[], None]]]:
    """A client for a Redis URL, and what closes it; every ``from_url`` builds with this.

    :raises ConfigurationError: an unsupported URL, or an option redis-py refuses.
    :raises BackendError: the client could not be built (a cluster that cannot be reached).
    """
    target = parse_url(url)
    try:
        return connect(target, options)
    except DRIVER_ERRORS as exc:
        raise translate(exc, redact(url)) from exc
    except (TypeError, ValueError) as exc:  # redis-py refusing the URL or an option
        raise ConfigurationError(f"cannot use {redact(url)!r}: {exc}") from exc


def connect(
    target: RedisTarget, options: dict[str, t.Any]
) -> tuple[t.Any, list[t.Callable[[], None]]]:
    """A client for ``target``, and what closes it."""
    options = dict(options)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("max_connections", 64)
    if target.kind == "redis":
        options.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL)
        # A broken connection (the server restarted, an idle socket was closed) fails at
        # once and is worth one retry on a new connection; a timeout is not retried, so a
        # call waits at most one socket_timeout (redis-py's default retries timeouts too).
        options.setdefault(
            "retry",
            redis.retry.Retry(
                redis.backoff.NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)
            ),
        )
        client = redis.Redis.from_url(target.url, **options)
        return client, [client.close]
    if target.username is not None:
        options.setdefault("username", target.username)
    if target.password is not None:
        options.setdefault("password", target.password)
    if target.kind == "cluster":
        # redis-py retries a cluster command ten times after a connection error or timeout,
        # so a hung master would hold each call for eleven socket timeouts. Retry once, at
        # once: the client re-reads the slot map in between, which covers a moved master.
        options.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 1))
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
        cluster = redis.cluster.RedisCluster(startup_nodes=nodes, **options)
        return cluster, [cluster.close]
    options.setdefault("health_check_interval", HEALTH_CHECK_INTERVAL)
    max_connections = options.pop("max_connections")
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if sentinel_kwargs is None:
        # Without a retry of its own, an unreachable sentinel fails over to the next one at
        # once (redis-py's default would retry each one ten times, with backoff).
        sentinel_kwargs = {
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        }
    manager_options = {
        name: options.pop(name)
        for name in ("min_other_sentinels", "force_master_ip")
        if name in options
    }
    sentinel = redis.sentinel.Sentinel(
        list(target.nodes), sentinel_kwargs=sentinel_kwargs, **manager_options, **options
    )
    assert target.service_name is not None  # the URL parser refuses a sentinel URL without one
    master = sentinel.master_for(target.service_name, db=target.db, max_connections=max_connections)
    return master, [master.close, *(s.close for s in sentinel.sentinels)]


def close_all(closers: list[t.Callable[[], None]]) -> None:
    errors = []
    for close in closers:
        try:
            close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def decodes_responses(client: t.Any) -> bool:
    try:
        return bool(client.get_encoder().decode_responses)
    except Exception:
        return False


def describe(client: t.Any) -> str:
    """Where ``client`` connects, without credentials."""
    try:
        if isinstance(client, redis.cluster.RedisCluster):
            hosts = ",".join(_host_port(n.host, n.port) for n in client.get_nodes())
            return f"redis+cluster://{hosts}"
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        db = kwargs.get("db", 0)
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            hosts = ",".join(
                _host_port(
                    s.connection_pool.connection_kwargs.get("host", "localhost"),
                    s.connection_pool.connection_kwargs.get("port", SENTINEL_PORT),
                )
                for s in pool.sentinel_manager.sentinels
            )
            return f"redis+sentinel://{hosts}/{pool.service_name}/{db}"
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}?db={db}"
        tls = issubclass(pool.connection_class, redis.connection.SSLConnection)
        host = _host_port(kwargs.get("host", "localhost"), kwargs.get("port", REDIS_PORT))
        return f"{'rediss' if tls else 'redis'}://{host}/{db}"
    except Exception:
        return type(client).__name__
