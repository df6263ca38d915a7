"""A rate-limited log for failures that repeat: one record per topic and interval.

A failing tier fails every call; a thousand background writes that fail must not write a
thousand tracebacks. :class:`RateLimitedLog` writes the first record of a topic, counts the
ones that follow within ``interval`` seconds, and says how many it suppressed in the next
record of that topic. Callers count every failure themselves (in ``stats()``): only the log
is thinned, never the accounting.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

__all__ = ["RateLimitedLog"]

#: Topics remembered at most; past it the oldest is forgotten (and may log again at once).
_MAX_TOPICS = 1024


class RateLimitedLog:
    """Logs a message at most once per ``interval`` seconds per topic; counts the rest.

    Thread-safe.

    :param interval: seconds between two records of one topic.
    :param clock: a monotonic clock in seconds (tests pass a fake one).
    :param logger: where records go (by default the ``"tieredcache"`` logger).
    """

    def __init__(
        self,
        interval: float = 10.0,
        clock: t.Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.logger = logger if logger is not None else logging.getLogger("tieredcache")
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        #: Records not written because an earlier one of their topic was, in total.
        self.suppressed_total = 0

    def warning(
        self,
        topic: str,
        message: str,
        *args: t.Any,
        exc_info: BaseException | bool | None = None,
    ) -> bool:
        """Log ``message % args`` at WARNING unless ``topic`` was logged within the interval.

        :param topic: what the message is about; topics are limited independently. Use a
            small, fixed set (a kind of failure), never a cache key.
        :param exc_info: as for :meth:`logging.Logger.warning` (a traceback is written only
            with the records that are not suppressed).
        :returns: True when the record was written.
        """
        now = self.clock()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._suppressed[topic] = self._suppressed.get(topic, 0) + 1
                self.suppressed_total += 1
                return False
            self._last.pop(topic, None)  # re-inserted last: the dict stays in age order
            self._last[topic] = now
            if len(self._last) > _MAX_TOPICS:
                oldest = next(iter(self._last))
                del self._last[oldest]
                self._suppressed.pop(oldest, None)
            suppressed = self._suppressed.pop(topic, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.warning(message, *args, exc_info=exc_info)
        return True
