"""A throwaway ``redis-server`` (see :mod:`tieredcache.testing.servers`)."""

from __future__ import annotations

import re
import typing as t

from tieredcache.testing.managed import ManagedServer
from tieredcache.testing.managed import resp_command

__all__ = ["RedisServer"]


class RedisServer(ManagedServer):
    """A ``redis-server`` without persistence on a loopback port.

    Not thread-safe: drive its life cycle from one thread.

    :param port: the port to listen on; a free one by default.
    :param extra_args: more command-line arguments, e.g. ``("--maxmemory", "10mb")``.
    :param binary: the executable, looked up on ``PATH``.
    :param start_timeout: seconds :meth:`start` waits for the first ``PONG``.
    """

    kind = "redis"
    package = "redis-server"
    _pid_request = resp_command("INFO", "server")
    _pid_pattern = re.compile(rb"\r\nprocess_id:(\d+)\r\n")

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: t.Sequence[str] = (),
        binary: str = "redis-server",
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(port, binary=binary, extra_args=extra_args, start_timeout=start_timeout)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def client_pause(self, ms: int, mode: t.Literal["ALL", "WRITE"] = "ALL") -> None:
        """Make the server hold every client's commands for *ms* milliseconds (``CLIENT PAUSE``).

        Unlike :meth:`pause`, the process keeps running: connections are accepted and commands
        are answered once the pause ends. Redis 7.0 holds ``CLIENT UNPAUSE`` too, so the pause
        cannot be cut short: keep *ms* small. :meth:`stop` and :meth:`kill` still work.
        """
        self._command_ok("CLIENT", "PAUSE", str(int(ms)), mode)

    def _command_ok(self, *args: str) -> None:
        reply = self._request(resp_command(*args), timeout=5.0)
        if not reply.startswith(b"+"):
            raise RuntimeError(f"{' '.join(args)} failed: {reply.decode('utf-8', 'replace')}")

    def _command(self, executable: str, workdir: str) -> list[str]:
        return [
            executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", workdir,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip

    def _probe_request(self) -> bytes:
        return b"PING\r\n"

    def _probe_ok(self, reply: bytes) -> bool:
        return reply == b"+PONG"
