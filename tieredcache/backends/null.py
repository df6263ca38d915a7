"""
Null
====

:class:`NullBackend` stores nothing: every read misses and every write succeeds. Use it to
switch a tier off without changing the code around it.
"""

from __future__ import annotations

import typing as t

from tieredcache.backends.base import Backend
from tieredcache.entry import Entry

__all__ = ["NullBackend"]


class NullBackend(Backend):
    """A backend that stores nothing. Thread-safe (it has no state)."""

    name = "null"
    local = True

    def _get(self, key: str) -> Entry | None:
        return None

    def _set(self, key: str, entry: Entry) -> None:
        return None

    def _add(self, key: str, entry: Entry) -> bool:
        return True

    def _delete(self, key: str) -> bool:
        return False

    def _incr(self, key: str, delta: int) -> int:
        raise KeyError(key)

    def _touch(self, key: str, expires_at: float | None) -> bool:
        return False

    def _clear(self) -> None:
        return None

    def _iter_keys(self, pattern: str) -> t.Iterator[str]:
        return iter(())

    def _invalidate_pattern(self, pattern: str) -> int:
        return 0
