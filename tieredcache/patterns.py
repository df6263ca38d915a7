"""
Key patterns on a composition
=============================

:func:`invalidate_pattern` and :func:`iter_keys` work on a :class:`~tieredcache.TieredCache`
(and on any single backend) with the glob syntax of :mod:`tieredcache.keyglob`.

Deleting by pattern on a composition is ordered like ``delete_many``: the keys L2 lists
are deleted in batches through the composition (L2 first, then L1, each batch holding the
keys' place in the per-key ordering, so a concurrent refill cannot bring a matched key
back), and each batch is announced on the backplane so that every other process drops
exactly those L1 copies. Keys that only this process's L1 holds are then dropped too. A
key written after the listing is written after the call began, and stays.
"""

from __future__ import annotations

import typing as t

from tieredcache.backends.base import Backend
from tieredcache.errors import UnsupportedOperationError
from tieredcache.tiered import TieredCache

__all__ = ["invalidate_pattern", "iter_keys"]

_BATCH = 500  # keys per ordered deletion


def invalidate_pattern(cache: Backend, pattern: str) -> int:
    """Delete every key matching ``pattern`` from every layer of ``cache``.

    :returns: how many keys were deleted (as L2 counts them; L1 when L2 held none).
    :raises InvalidKeyError: ``pattern`` is not a str.
    :raises UnsupportedOperationError: a layer cannot list its keys (memcached).
    :raises BackendError: a layer failed; the layers before it were already cleaned.
    """
    if not isinstance(cache, TieredCache):
        return cache.invalidate_pattern(pattern)
    deleted = 0
    batch: list[str] = []
    for key in iter_keys(cache, pattern):  # memcached raises here, before any deletion
        batch.append(key)
        if len(batch) >= _BATCH:
            deleted += len(batch)
            cache.delete_many(batch)
            batch = []
    if batch:
        deleted += len(batch)
        cache.delete_many(batch)
    # Keys only this process's L1 holds (L2 lost them, or Refill.NEVER elsewhere).
    try:
        l1_only = list(iter_keys(cache.l1, pattern))
    except UnsupportedOperationError:
        l1_only = []  # an L1 that cannot list keys holds copies for at most its TTL
    if l1_only:
        cache.delete_many(l1_only)
    return deleted or len(l1_only)


def iter_keys(cache: Backend, pattern: str = "*") -> t.Iterator[str]:
    """The keys matching ``pattern`` that ``cache`` holds, as its L2 lists them.

    A composition's L1 holds copies of L2 entries, so L2 is the list of record.

    :raises UnsupportedOperationError: the L2 cannot list its keys (memcached).
    """
    while isinstance(cache, TieredCache):
        cache = cache.l2
    return cache.iter_keys(pattern)
