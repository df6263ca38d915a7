"""Memcached servers: reading the server lists of options and URLs, naming a server in
messages, finding the servers and pooled clients behind a ``pymemcache`` client, and
listing and emptying one server (:func:`listed_keys`, :func:`flush_server`)."""

from __future__ import annotations

import re
import threading
import time
import typing as t
import urllib.parse

from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheServerError
from pymemcache.exceptions import MemcacheUnexpectedCloseError

from tieredcache.errors import ConfigurationError

__all__ = [
    "DEFAULT_PORT",
    "Server",
    "ServersSpec",
    "flush_server",
    "format_server",
    "listed_keys",
    "parse_servers",
    "pooled_clients",
    "servers_of",
]

Server = t.Union[str, tuple[str, int]]
"""One server: ``"host:port"``, ``(host, port)`` or the path of a unix socket."""

ServersSpec = t.Union[str, tuple[str, int], t.Sequence[t.Union[str, tuple[str, int]]]]
"""One server or several; a string may list several, separated by ``,`` or ``;``."""

DEFAULT_PORT = 11211


def parse_servers(spec: ServersSpec) -> list[Server]:
    """The servers in ``spec`` as ``(host, port)`` tuples (or socket paths), without repeats.

    :raises ConfigurationError: ``spec`` names no server or a malformed one.
    """
    items: list[t.Any]
    if isinstance(spec, str):
        items = re.split(r"[,;]", spec)
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], int):
        items = [spec]
    elif isinstance(spec, (list, tuple)):
        items = []
        for item in spec:
            items.extend(re.split(r"[,;]", item) if isinstance(item, str) else [item])
    else:
        raise ConfigurationError(f"cannot read memcached servers from {spec!r}")
    servers: list[Server] = []
    for item in items:
        server = _parse_server(item)
        if server is not None and server not in servers:
            servers.append(server)
    if not servers:
        raise ConfigurationError(f"no memcached server in {spec!r}")
    return servers


def _parse_server(item: t.Any) -> Server | None:
    if isinstance(item, tuple) and len(item) == 2:
        host, port = item
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise ConfigurationError(f"a server must be (host: str, port: int), not {item!r}")
        return (host, port)
    if not isinstance(item, str):
        raise ConfigurationError(f"a server must be 'host:port' or (host, port), not {item!r}")
    text = item.strip()
    if not text:
        return None
    if text.startswith("unix:"):
        return text[len("unix:") :]
    if text.startswith("/"):
        return text
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"a server must be 'host:port', not {item!r}")
    return (host, int(port))


def servers_of(client: t.Any) -> list[Server]:
    """The servers a ready client talks to (for ``repr`` and messages)."""
    found: list[Server] = []
    for pooled in pooled_clients(client):
        server = getattr(pooled, "server", None)
        if isinstance(server, (str, tuple)):
            found.append(server)
    return found


def pooled_clients(client: t.Any) -> list[t.Any]:
    """The pooled clients behind ``client``: one per server of a hashing client."""
    if isinstance(client, HashClient):
        return list(client.clients.values())
    return [client]


def format_server(server: Server) -> str:
    """``host:port`` (``[host]:port`` for IPv6) or ``unix:path``, for messages."""
    if isinstance(server, tuple):
        host, port = server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{server}"


_LISTINGS = (b"lru_crawler metadump hash", b"lru_crawler metadump all")
_BUSY_WAIT = 0.005


def listed_keys(client: t.Any, patience: float = 5.0) -> list[bytes]:
    """The keys one memcached server holds, from its own listing.

    The listing walks the server's hash table (``lru_crawler metadump hash``), so an item the
    server is moving between its LRU queues at that moment is listed too; a server too old
    for that walks its LRU queues instead (``metadump all``). Items expired or flushed are
    not listed. While the server's crawler is busy with other work, the listing is asked for
    again, for up to ``patience`` seconds; after that a ``MemcacheServerError`` is raised.
    """
    deadline = time.monotonic() + patience
    waiting = threading.Event()
    for command in _LISTINGS:
        while True:
            reply = _ask(client, command)
            if reply.startswith((b"key=", b"END")):
                return [
                    urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:].decode("ascii"))
                    for line in reply.split(b"\n")
                    if line.startswith(b"key=")
                ]
            if reply.startswith(b"SERVER_ERROR"):
                raise MemcacheServerError(reply.decode("ascii", "replace"))
            if not reply.startswith(b"BUSY"):
                break  # ERROR, CLIENT_ERROR, BADCLASS: not known here, try the next listing
            if time.monotonic() >= deadline:
                raise MemcacheServerError(f"the server's crawler stayed busy for {patience} s")
            waiting.wait(_BUSY_WAIT)
    raise MemcacheServerError("the server cannot list its keys (lru_crawler metadump)")


def _ask(client: t.Any, command: bytes) -> bytes:
    """Send ``command`` on one of ``client``'s connections and read its whole reply.

    A listing is read here rather than by ``raw_command``, whose reader keeps only the last
    socket read of a reply longer than one read. Every reply of these commands ends at its
    first ``\\r\\n``: listed keys are escaped and end their lines with ``\\n``, the listing
    ends with ``END\\r\\n``, and a refusal (``BUSY``, ``ERROR``) is one line.
    """
    pool = getattr(client, "client_pool", None)
    if pool is not None:  # a pooled client: use one of its connections
        with pool.get_and_release(destroy_on_fail=True) as connection:
            return _ask(connection, command)
    client.version()  # connects a client that is not connected yet
    sock = client.sock
    try:
        sock.sendall(command + b"\r\n")
        reply = bytearray()
        while True:
            searched = max(len(reply) - 1, 0)
            chunk = sock.recv(65536)
            if not chunk:
                raise MemcacheUnexpectedCloseError()
            reply += chunk
            end = reply.find(b"\r\n", searched)
            if end >= 0:
                return bytes(reply[:end])
    except BaseException:
        client.close()  # the connection is somewhere inside a reply
        raise


def flush_server(client: t.Any) -> int:
    """Empty one memcached server; how many items outlived ``flush_all`` and were deleted.

    ``flush_all`` invalidates what the server holds, but an item stored through another
    connection, handled by another of the server's threads, at about the same moment can
    outlive it (about one in sixty here). The server's own listing of what it still holds
    (:func:`listed_keys`) finds such items, and they are deleted one by one.
    """
    client.flush_all(noreply=False)
    survivors = listed_keys(client)
    for key in survivors:
        client.delete(key, noreply=False)
    return len(survivors)
