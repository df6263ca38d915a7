"""
Events
======

A composition tells subscribers about the moments worth a log line, an alert or a graph
annotation. Subscribe with :meth:`Events.subscribe` on ``cache.events``::

    >>> from tieredcache import MemoryBackend, TieredCache
    >>> from tieredcache.events import BACKPLANE_RESET
    >>> cache = TieredCache(MemoryBackend(), MemoryBackend())
    >>> seen = []
    >>> unsubscribe = cache.events.subscribe(BACKPLANE_RESET, seen.append)
    >>> cache.events.emit(BACKPLANE_RESET)
    >>> seen
    [Event(name='backplane_reset', details={})]
    >>> unsubscribe()
    >>> cache.close()

- ``breaker_opened``: the L2's circuit breaker opened after repeated failures (details:
  ``breaker``, its name);
- ``breaker_closed``: it closed again, L2 answers (``breaker``);
- ``replay_done``: the L2 writes queued under fail-open were replayed (``replayed``, how many);
- ``backplane_reset``: invalidations may have been missed, so L1 was flushed;
- ``stale_served``: ``get_or_set`` served a stale value and scheduled a refresh (``key``);
- ``loader_timeout``: a loader ran past its time limit (``key``).

Callbacks run on the thread where the event happened (a caller's, the L2 gate's worker, the
backplane's subscriber), so they must be short. A callback's exception is logged and never
reaches the code that emitted the event. With no subscriber, emitting costs one dictionary
lookup.
"""

from __future__ import annotations

import logging
import threading
import typing as t

__all__ = [
    "BACKPLANE_RESET",
    "BREAKER_CLOSED",
    "BREAKER_OPENED",
    "EVENTS",
    "LOADER_TIMEOUT",
    "REPLAY_DONE",
    "STALE_SERVED",
    "Event",
    "EventCallback",
    "Events",
]

logger = logging.getLogger("tieredcache.events")

BREAKER_OPENED = "breaker_opened"
BREAKER_CLOSED = "breaker_closed"
REPLAY_DONE = "replay_done"
BACKPLANE_RESET = "backplane_reset"
STALE_SERVED = "stale_served"
LOADER_TIMEOUT = "loader_timeout"

EVENTS = (
    BREAKER_OPENED,
    BREAKER_CLOSED,
    REPLAY_DONE,
    BACKPLANE_RESET,
    STALE_SERVED,
    LOADER_TIMEOUT,
)
"""Every event name."""


class Event(t.NamedTuple):
    """One occurrence: its name and what is known about it."""

    name: str
    details: dict[str, t.Any]


EventCallback = t.Callable[[Event], object]
"""``callback(event)``: called for each event it subscribed to."""


class Events:
    """Subscribers per event name. Thread-safe; subscribing never blocks an emitter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Copied on change, so emit() reads a tuple without the lock.
        self._subscribers: dict[str, tuple[EventCallback, ...]] = {}

    def subscribe(self, name: str, callback: EventCallback) -> t.Callable[[], None]:
        """Call ``callback(event)`` for every event ``name``; returns the unsubscriber.

        :raises ValueError: ``name`` is not in :data:`EVENTS`.
        :raises TypeError: ``callback`` is not callable.
        """
        if name not in EVENTS:
            raise ValueError(f"unknown event {name!r}; known: {', '.join(EVENTS)}")
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {callback!r}")
        with self._lock:
            self._subscribers[name] = (*self._subscribers.get(name, ()), callback)
        return lambda: self.unsubscribe(name, callback)

    def unsubscribe(self, name: str, callback: EventCallback) -> None:
        """Stop calling ``callback`` for ``name`` (nothing happens if it was not subscribed)."""
        with self._lock:
            callbacks = list(self._subscribers.get(name, ()))
            if callback in callbacks:
                callbacks.remove(callback)
            if callbacks:
                self._subscribers[name] = tuple(callbacks)
            else:
                self._subscribers.pop(name, None)

    def emit(self, name: str, **details: t.Any) -> None:
        """Tell the subscribers of ``name``; their exceptions are logged, never raised."""
        callbacks = self._subscribers.get(name)
        if not callbacks:
            return
        event = Event(name, details)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:
                logger.exception("tieredcache: a %s event callback raised", name)

    def subscribers(self, name: str) -> int:
        """How many callbacks ``name`` has."""
        return len(self._subscribers.get(name, ()))
