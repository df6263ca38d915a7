"""
Features of a composition
=========================

:class:`CacheFeatures` gives :class:`~tieredcache.TieredCache` its tag-aware ``add`` and
``set_many`` (``set`` takes ``tags=`` itself), :meth:`~CacheFeatures.invalidate_tags`,
ordered :meth:`~CacheFeatures.invalidate_pattern`, and the ``memoize`` decorators. The
logic lives in :mod:`.tags`, :mod:`tieredcache.patterns` and :mod:`tieredcache.memoize`.
"""

from __future__ import annotations

import typing as t

from tieredcache.backends.base import Backend
from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.tiered.tags import check_tags

if t.TYPE_CHECKING:
    from tieredcache.memoize import Memoized
    from tieredcache.memoize import MemoizedMany
    from tieredcache.tiered.tags import TagIndex

    _Base = Backend
else:
    _Base = object

__all__ = ["CacheFeatures"]

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


class CacheFeatures(_Base):
    """Tags, pattern invalidation and memoization for a composition (a mixin)."""

    tag_index: TagIndex

    def add(self, key: str, value: t.Any, ttl: t.Any = DEFAULT, *, tags: t.Any = ()) -> bool:
        """Store ``value`` only if ``key`` holds no value; True if it was stored."""
        if not tags:
            return super().add(key, value, ttl)
        chosen = check_tags(tags)
        entry = self._new_entry(value, ttl)
        if entry is None:
            return False
        entry.tags = chosen
        return self.add_entry(key, entry)

    def set_many(
        self, mapping: t.Mapping[str, t.Any], ttl: t.Any = DEFAULT, *, tags: t.Any = ()
    ) -> None:
        """Store every item for ``ttl`` seconds, each carrying ``tags``."""
        if not tags:
            super().set_many(mapping, ttl)
            return
        chosen = check_tags(tags)
        seconds = self._ttl_seconds(ttl)
        if seconds is not None and seconds <= 0:
            self.delete_many(list(mapping))
            return
        expires_at = None if seconds is None else self._now() + seconds
        self.set_entries(
            {k: Entry(v, expires_at, next_version(), None, chosen) for k, v in mapping.items()}
        )

    def invalidate_tags(self, tags: t.Iterable[str]) -> None:
        """Invalidate every entry written before this call that carries one of ``tags``.

        When it returns, no read in this process returns such an entry; other processes
        stop within the backplane's delay (or ``tag_ttl`` without a backplane), and a
        process started later never sees them: the invalidation is recorded in L2.

        :raises InvalidKeyError: ``tags`` is not a collection of non-empty str.
        :raises BackendError: L2 failed (without fail-open); this process already applies
            the invalidation, other processes may not.
        """
        self.tag_index.invalidate(tags)

    def invalidate_pattern(self, pattern: str) -> int:
        """Delete every entry whose key matches the glob ``pattern``; how many L2 held.

        See :func:`tieredcache.patterns.invalidate_pattern`.

        :raises UnsupportedOperationError: the L2 cannot list its keys (memcached: use tags).
        """
        from tieredcache.patterns import invalidate_pattern

        return invalidate_pattern(self, pattern)

    def memoize(
        self,
        ttl: t.Any = DEFAULT,
        *,
        stale_ttl: float | None = None,
        tags: t.Any = (),
        key: t.Callable[..., str] | None = None,
        unless: t.Callable[..., bool] | None = None,
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        refresh_ahead: float | None = None,
    ) -> t.Callable[[F], Memoized[F]]:
        """A decorator caching a function's results in this cache.

        See :class:`tieredcache.memoize.Memoized`.
        """
        from tieredcache.memoize import memoizer

        return memoizer(
            self,
            ttl=ttl,
            stale_ttl=stale_ttl,
            tags=tags,
            key=key,
            unless=unless,
            soft_timeout=soft_timeout,
            hard_timeout=hard_timeout,
            refresh_ahead=refresh_ahead,
        )

    def memoize_many(
        self,
        ttl: t.Any = DEFAULT,
        *,
        tags: t.Any = (),
        key: t.Callable[..., str] | None = None,
    ) -> t.Callable[[F], MemoizedMany[F]]:
        """A decorator caching a batch function's results one entry per argument.

        See :class:`tieredcache.memoize.MemoizedMany`.
        """
        from tieredcache.memoize import many_memoizer

        return many_memoizer(self, ttl=ttl, tags=tags, key=key)
