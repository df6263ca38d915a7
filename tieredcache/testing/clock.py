"""A clock that tests move by hand, and a bounded wait for a condition."""

from __future__ import annotations

import threading
import time
import typing as t

__all__ = ["FakeClock", "wait_until"]


class FakeClock:
    """A clock in epoch seconds that only moves when told to.

    Pass it as ``timer=`` to a backend or composition. Thread-safe.

    :param start: the initial time; by default the real current time, so that stores
        with server-side expiry receive sensible absolute times.
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` and return the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
            return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"


def wait_until(condition: t.Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass; return its last value.

    For tests that must observe another thread reaching a state that offers no event to
    wait on (for example, a number of callers blocked inside a lock).
    """
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return bool(condition())
        threading.Event().wait(pause)
        pause = min(pause * 2, 0.02)
