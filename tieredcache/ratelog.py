"""Warnings that repeat at most once per interval per topic, with a count of the rest."""

from __future__ import annotations

import collections
import logging
import threading
import time
import typing as t

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs a message at most once per ``interval`` seconds per topic; counts the rest.

    The first message after a quiet interval says how many were suppressed before it.
    Thread-safe.

    :param logger: where the messages go.
    :param interval: the least number of seconds between two messages of one topic.
    :param clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: t.Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, topic: str, message: str, *args: t.Any, exc_info: bool = False) -> bool:
        """Log ``message % args`` unless ``topic`` was logged less than ``interval`` ago.

        :returns: True if it was logged.
        """
        now = self.clock()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._suppressed[topic] += 1
                return False
            self._last[topic] = now
            suppressed = self._suppressed.pop(topic, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.warning(message, *args, exc_info=exc_info, stacklevel=2)
        return True

    def suppressed(self) -> int:
        """How many messages are suppressed and not yet reported."""
        with self._lock:
            return sum(self._suppressed.values())
