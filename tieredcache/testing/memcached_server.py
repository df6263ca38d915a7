"""A throwaway ``memcached`` (see :mod:`tieredcache.testing.servers`)."""

from __future__ import annotations

import os
import re
import signal
import typing as t

from tieredcache.testing.managed import ManagedServer

__all__ = ["MemcachedServer"]


class MemcachedServer(ManagedServer):
    """A ``memcached`` on a loopback port, TCP only.

    Not thread-safe: drive its life cycle from one thread.

    :param port: the port to listen on; a free one by default.
    :param max_item_size: largest item (``-I``): bytes, or a string such as ``"1m"``.
    :param memory_mb: memory limit in megabytes (``-m``).
    :param extra_args: more command-line arguments.
    :param binary: the executable, looked up on ``PATH``.
    :param start_timeout: seconds :meth:`start` waits for the first ``VERSION`` reply.
    """

    kind = "memcached"
    package = "memcached"
    # memcached keeps nothing worth a clean shutdown, and on SIGTERM it lingers until its next
    # clock tick (up to a second), which would add up over a suite of failure tests.
    stop_signal = signal.SIGKILL
    _pid_request = b"stats\r\n"
    _pid_pattern = re.compile(rb"\bSTAT pid (\d+)\r\n")

    def __init__(
        self,
        port: int | None = None,
        *,
        max_item_size: int | str = "1m",
        memory_mb: int = 64,
        extra_args: t.Sequence[str] = (),
        binary: str = "memcached",
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(port, binary=binary, extra_args=extra_args, start_timeout=start_timeout)
        self.max_item_size = max_item_size
        self.memory_mb = memory_mb

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``, as pymemcache takes it."""
        return (self.host, self.port)

    def _command(self, executable: str, workdir: str) -> list[str]:
        args = [
            executable,
            "-l", self.host,
            "-p", str(self.port),
            "-U", "0",
            "-m", str(self.memory_mb),
            "-t", "2",
            "-I", str(self.max_item_size),
        ]  # fmt: skip
        if os.geteuid() == 0:
            # memcached refuses to run as root unless told which user to be.
            args += ["-u", "root"]
        args += self.extra_args
        return args

    def _probe_request(self) -> bytes:
        return b"version\r\n"

    def _probe_ok(self, reply: bytes) -> bool:
        return reply.startswith(b"VERSION ")
