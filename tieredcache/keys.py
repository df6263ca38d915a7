"""Key rules: what a cache key is, checked once at the outer boundary.

A key is a ``str``. The friendly API (:mod:`tieredcache.api`) and the compositions check
keys with these functions before anything is stamped or encoded; the entry-level methods
below them take keys as given.
"""

from __future__ import annotations

import typing as t

from tieredcache.errors import InvalidKeyError

__all__ = ["check_key", "check_keys", "unique_keys"]


def check_key(key: t.Any) -> None:
    """Raise :class:`~tieredcache.errors.InvalidKeyError` unless ``key`` is a str."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"cache keys must be str, not {type(key).__name__}")


def check_keys(keys: t.Iterable[t.Any]) -> None:
    """:func:`check_key` for every key (the types of all keys in one C-level pass)."""
    if set(map(type, keys)) - {str}:
        for key in keys:  # str subclasses are checked one by one
            check_key(key)


def unique_keys(keys: t.Iterable[str]) -> list[str]:
    """``keys`` as a list without repeats, each checked; a single str is an error."""
    if isinstance(keys, str):
        raise InvalidKeyError("expected an iterable of keys, got a single str")
    wanted = list(dict.fromkeys(keys))
    check_keys(wanted)
    return wanted
