"""
Key patterns on a composition
=============================

:func:`invalidate_pattern` and :func:`iter_keys` work on a :class:`~tieredcache.TieredCache`
(and on any single backend) with the glob syntax of :mod:`tieredcache.keyglob`.

Deleting by pattern follows the composition's delete order: L2 first (the shared
authority), then this process's L1, then an announcement on the backplane so that every
other process drops its L1 copies. The backplane has no pattern message, so the
announcement is a ``"clear"``: other processes flush their whole L1 and re-read from L2
(correct, and costlier than evicting only the matching keys).

A read in this process that fetched a matching key from L2 just before the L2 deletion may
still put it back into L1 afterwards, for at most the L1 TTL; ``delete_many`` of known
keys has no such window.
"""

from __future__ import annotations

import typing as t

from tieredcache.backends.base import Backend
from tieredcache.entry import next_version
from tieredcache.tiered import TieredCache

__all__ = ["invalidate_pattern", "iter_keys"]


def invalidate_pattern(cache: Backend, pattern: str) -> int:
    """Delete every key matching ``pattern`` from every layer of ``cache``.

    :returns: how many keys were deleted (as L2 counts them; L1 when L2 held none).
    :raises InvalidKeyError: ``pattern`` is not a str.
    :raises UnsupportedOperationError: a layer cannot list its keys (memcached).
    :raises BackendError: a layer failed; the layers before it were already cleaned.
    """
    if not isinstance(cache, TieredCache):
        return cache.invalidate_pattern(pattern)
    deleted = invalidate_pattern(cache.l2, pattern)
    l1_deleted = invalidate_pattern(cache.l1, pattern)
    if cache.backplane is not None:
        cache.backplane.publish("clear", [], next_version())
    return deleted or l1_deleted


def iter_keys(cache: Backend, pattern: str = "*") -> t.Iterator[str]:
    """The keys matching ``pattern`` that ``cache`` holds, as its L2 lists them.

    A composition's L1 holds copies of L2 entries, so L2 is the list of record.

    :raises UnsupportedOperationError: the L2 cannot list its keys (memcached).
    """
    while isinstance(cache, TieredCache):
        cache = cache.l2
    return cache.iter_keys(pattern)
