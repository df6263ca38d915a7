"""Running a check in a forked child: what a test of fork safety needs."""

from __future__ import annotations

import os
import select
import signal
import typing as t

__all__ = ["report_from_child"]


def report_from_child(child: t.Callable[[], bytes], timeout: float) -> bytes:
    """Fork; the child runs ``child()`` and reports what it returns (or the ``repr`` of
    what it raised) through a pipe, then exits at once. The parent returns that report.

    :raises AssertionError: the child reported nothing within ``timeout`` seconds (it is
        then killed).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = b"?"
        try:
            os.close(read)
            status = child()
        except BaseException as exc:  # report anything, never hang the parent
            status = repr(exc).encode()
        finally:
            os.write(write, status)
            os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], timeout)
        assert ready, "the forked child hung"
        return os.read(read, 65536)
    finally:
        os.close(read)
        if not os.waitpid(pid, os.WNOHANG)[0]:  # not reaped yet: still running
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
