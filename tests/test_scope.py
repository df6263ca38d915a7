"""The operation scope of the L2 gate: nested operations, failures and forks."""

from __future__ import annotations

import os

import pytest

from tieredcache import MemoryBackend
from tieredcache import TieredCache
from tieredcache.errors import BackendUnavailableError


def test_operation_scope_survives_a_fork_inside_a_nested_operation() -> None:
    """The child of a fork made inside a nested operation unwinds both levels; in its next
    operation an L2 availability failure must still make the rest fail fast."""
    cache = TieredCache(MemoryBackend(8), MemoryBackend(8))
    gate = cache.gate

    def down() -> None:
        raise BackendUnavailableError("down", backend="l2")

    read_fd, write_fd = os.pipe()
    with gate.operation(), gate.operation():
        pid = os.fork()
    if pid == 0:  # the child
        try:
            fast = False
            with gate.operation():
                with pytest.raises(BackendUnavailableError):
                    gate.call(down)
                try:
                    gate.call(lambda: None)
                except BackendUnavailableError:
                    fast = True  # failed fast: the operation remembered the failure
            os.write(write_fd, b"1" if fast else b"0")
        finally:
            os._exit(0)
    os.close(write_fd)
    answer = os.read(read_fd, 1)
    os.waitpid(pid, 0)
    os.close(read_fd)
    assert answer == b"1"
