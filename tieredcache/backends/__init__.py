"""Storage backends: one layer each, blocking and thread-safe."""

from tieredcache.backends.base import Backend

__all__ = ["Backend"]
