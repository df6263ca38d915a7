"""A throwaway Redis Cluster: a few ``redis-server`` masters on loopback, joined by ``redis-cli``.

For tests that need a real distributed L2: keys spread over several masters by hash slot, and
one master can be killed and restarted while the others keep serving::

    with RedisCluster() as cluster:              # 3 masters, no replicas
        backend = RedisBackend.from_url(cluster.url)
        node = cluster.node_for_key("app:user:42")
        node.kill()                              # its slots stop answering; the rest serve on
        node.start()                             # same port, same node ID, same slots
        cluster.wait_ok()

Each master is a :class:`~tieredcache.testing.servers.RedisServer`, driven by PID. Its cluster
configuration file (``nodes-<port>.conf``) lives in the server's own temporary directory, which
:meth:`~tieredcache.testing.servers.ManagedServer.kill` keeps, so a restarted master rejoins
with its node ID and slots. Only the standard library is imported.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import typing as t

from tieredcache.testing.clock import wait_until
from tieredcache.testing.managed import PortInUseError
from tieredcache.testing.managed import resp_command
from tieredcache.testing.servers import LOOPBACK
from tieredcache.testing.servers import RedisServer
from tieredcache.testing.servers import ServerNotInstalledError
from tieredcache.testing.servers import ServerStartError
from tieredcache.testing.servers import free_port

__all__ = ["SLOTS", "RedisCluster", "key_slot"]

SLOTS = 16384
"""The number of hash slots of a Redis Cluster."""

_PORT_ATTEMPTS = 3
_MAX_REPLY = 1024 * 1024
_OUTPUT_TAIL_CHARS = 2000


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: str | bytes) -> int:
    """The hash slot of *key* (CRC16/XMODEM modulo 16384), honouring ``{hash tags}``."""
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS


class RedisCluster:
    """*masters* ``redis-server`` processes on free loopback ports, joined into one cluster.

    No replicas: a killed master's slots stay down until it is started again. The cluster
    runs with ``cluster-require-full-coverage no`` by default, so the other masters keep
    serving their slots meanwhile (with ``yes`` the whole cluster refuses every command
    once the failure is detected, after ``node_timeout_ms``).

    Not thread-safe: drive its life cycle from one thread.

    :param masters: the number of masters (at least 3, as ``redis-cli --cluster create`` wants).
    :param node_timeout_ms: ``cluster-node-timeout``: how long a silent master takes to be
        marked as failed.
    :param require_full_coverage: ``cluster-require-full-coverage``.
    :param extra_args: more command-line arguments for every ``redis-server``.
    :param binary: the server executable, looked up on ``PATH``.
    :param cli_binary: the ``redis-cli`` executable that creates the cluster.
    :param start_timeout: seconds :meth:`start` may take in all.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        node_timeout_ms: int = 2000,
        require_full_coverage: bool = False,
        extra_args: t.Sequence[str] = (),
        binary: str = "redis-server",
        cli_binary: str = "redis-cli",
        start_timeout: float = 15.0,
    ) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, not {masters}")
        self.masters = masters
        self.node_timeout_ms = node_timeout_ms
        self.require_full_coverage = require_full_coverage
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.binary = binary
        self.cli_binary = cli_binary
        self.start_timeout = start_timeout
        #: The masters, in the order given to ``redis-cli`` (empty until :meth:`start`).
        self.nodes: list[RedisServer] = []
        self._slot_owner: list[RedisServer] = []

    # -- properties --

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` for ``RedisBackend.from_url``."""
        self._require_nodes()
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``[(host, port), ...]`` of the masters."""
        return [(node.host, node.port) for node in self.nodes]

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master that serves *slot*, as the cluster reported at the last :meth:`wait_ok`."""
        self._require_nodes()
        return self._slot_owner[slot]

    def node_for_key(self, key: str | bytes) -> RedisServer:
        """The master that serves *key* (the full key, prefix included)."""
        return self.node_for_slot(key_slot(key))

    def cluster_info(self, node: RedisServer) -> dict[str, str]:
        """*node*'s ``CLUSTER INFO``, such as ``{"cluster_state": "ok", ...}``.

        :raises OSError: the node could not be reached or did not answer within a second.
        :raises RuntimeError: the node answered with an error.
        """
        return _parse_info(_query(node, "CLUSTER", "INFO"))

    # -- life cycle --

    def start(self) -> None:
        """Start the masters, create the cluster and return once every master reports it ok.

        :raises ServerNotInstalledError: ``redis-server`` or ``redis-cli`` is not on ``PATH``.
        :raises ServerStartError: a master did not start, ``redis-cli`` failed, or the cluster
            was not ok within :attr:`start_timeout` seconds. Nothing is left running.
        :raises RuntimeError: the cluster is already started.
        """
        if self.nodes:
            raise RuntimeError(f"{self!r} is already started")
        cli = shutil.which(self.cli_binary)
        if cli is None:
            raise ServerNotInstalledError(self.cli_binary, "redis-tools")
        deadline = time.monotonic() + self.start_timeout
        try:
            for _ in range(self.masters):
                self.nodes.append(self._start_node())
            self._create(cli, deadline)
            self.wait_ok(max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every master by PID and remove its files. Idempotent."""
        nodes, self.nodes = self.nodes, []
        self._slot_owner = []
        errors: list[BaseException] = []
        for node in nodes:
            try:
                node.stop(timeout)
            except Exception as exc:  # pragma: no cover - stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]

    def is_ok(self) -> bool:
        """Whether every master runs and reports the whole cluster healthy.

        Healthy: ``cluster_state:ok``, all 16384 slots ok (none served by a master marked as
        failing) and every master known.
        """
        return bool(self.nodes) and all(self._problem(node) is None for node in self.nodes)

    def wait_ok(self, timeout: float = 10.0) -> None:
        """Return once :meth:`is_ok` holds, and refresh the slot map of :meth:`node_for_slot`.

        After a master's restart this takes up to twice ``node_timeout_ms`` from the moment
        the others marked it as failed: that is when they clear the mark.

        :raises ServerStartError: the cluster was not healthy within *timeout* seconds.
        """
        self._require_nodes()
        problems: list[str] = []

        def healthy() -> bool:
            problems[:] = [
                f"{node!r}: {problem}"
                for node in self.nodes
                if (problem := self._problem(node)) is not None
            ]
            return not problems

        if not wait_until(healthy, timeout):
            raise ServerStartError(
                f"the cluster was not ok within {timeout:g}s: {'; '.join(problems)}"
            )
        self._slot_owner = self._read_slot_map()

    def __enter__(self) -> RedisCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        if not self.nodes:
            return f"<RedisCluster masters={self.masters} stopped>"
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<RedisCluster {LOOPBACK}:{ports}>"

    # -- internals --

    def _start_node(self) -> RedisServer:
        for attempt in range(_PORT_ATTEMPTS):
            port, bus_port = free_port(), free_port()
            coverage = "yes" if self.require_full_coverage else "no"
            args = [
                "--cluster-enabled", "yes",
                # Relative to the server's own directory, which kill() keeps for a restart.
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-port", str(bus_port),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-require-full-coverage", coverage,
                *self.extra_args,
            ]  # fmt: skip
            node = RedisServer(port, extra_args=args, binary=self.binary)
            try:
                node.start()
            except PortInUseError:
                # Either port was taken since free_port(): pick two new ones.
                if attempt + 1 == _PORT_ATTEMPTS:
                    raise
                continue
            return node
        raise AssertionError("unreachable")  # pragma: no cover

    def _create(self, cli: str, deadline: float) -> None:
        command = [
            cli, "--cluster", "create",
            *(f"{node.host}:{node.port}" for node in self.nodes),
            "--cluster-replicas", "0",
            "--cluster-yes",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=max(0.1, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.output or b"").decode("utf-8", "replace")[-_OUTPUT_TAIL_CHARS:]
            raise ServerStartError(
                f"redis-cli --cluster create did not finish within {self.start_timeout:g}s; "
                f"output:\n{output}"
            ) from exc
        if done.returncode != 0:
            output = done.stdout.decode("utf-8", "replace")[-_OUTPUT_TAIL_CHARS:]
            raise ServerStartError(
                f"redis-cli --cluster create exited with code {done.returncode}; output:\n{output}"
            )

    def _problem(self, node: RedisServer) -> str | None:
        """Why *node* does not report a healthy cluster, or ``None`` if it does."""
        if not node.is_running():
            return "not running"
        try:
            info = self.cluster_info(node)
        except (OSError, RuntimeError) as exc:
            return f"CLUSTER INFO failed: {exc}"
        expected = {
            "cluster_state": "ok",
            "cluster_slots_ok": str(SLOTS),
            "cluster_known_nodes": str(len(self.nodes)),
        }
        wrong = [f"{k}:{info.get(k)}" for k, v in expected.items() if info.get(k) != v]
        return ", ".join(wrong) or None

    def _read_slot_map(self) -> list[RedisServer]:
        by_port = {node.port: node for node in self.nodes}
        owner: list[RedisServer | None] = [None] * SLOTS
        for line in _query(self.nodes[0], "CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            if len(fields) < 8 or "master" not in fields[2].split(","):
                continue
            port = int(fields[1].split("@", 1)[0].rpartition(":")[2])
            for spec in fields[8:]:
                if spec.startswith("["):  # a slot being migrated or imported
                    continue
                first, _, last = spec.partition("-")
                for slot in range(int(first), int(last or first) + 1):
                    owner[slot] = by_port[port]
        missing = owner.count(None)
        if missing:
            raise ServerStartError(f"{missing} slots have no master in CLUSTER NODES")
        return t.cast("list[RedisServer]", owner)

    def _require_nodes(self) -> None:
        if not self.nodes:
            raise RuntimeError(f"{self!r} is not started")


def _query(node: RedisServer, *args: str, timeout: float = 1.0) -> bytes:
    """The reply to one command: a status, integer or bulk string, as bytes.

    :raises RuntimeError: the server answered with an error.
    :raises OSError: the server could not be reached or did not answer in time.
    """
    with socket.create_connection((node.host, node.port), timeout=timeout) as sock:
        sock.sendall(resp_command(*args))
        buf = b""
        while b"\r\n" not in buf:
            buf += _recv(sock)
        header, _, rest = buf.partition(b"\r\n")
        kind, body = header[:1], header[1:]
        if kind == b"-":
            raise RuntimeError(body.decode("utf-8", "replace"))
        if kind in (b"+", b":"):
            return body
        if kind != b"$":
            raise RuntimeError(f"unexpected reply {header[:80]!r}")
        size = int(body)
        if size < 0:
            return b""
        if size > _MAX_REPLY:
            raise RuntimeError(f"reply of {size} bytes is too large")
        while len(rest) < size + 2:
            rest += _recv(sock)
        return rest[:size]


def _recv(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionResetError("the server closed the connection")
    return chunk


def _parse_info(reply: bytes) -> dict[str, str]:
    fields = {}
    for line in reply.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields
