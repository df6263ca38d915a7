"""
django-redis's sorted-set commands
==================================

:class:`SortedSetCommands` gives the Django backend django-redis 7's sorted-set methods
(``zadd``, ``zrange``, ``zpopmin``, ...), with django-redis's signatures and results. Like
the hash and set commands of :mod:`tieredcache.contrib.django_redis_api`, they work on a
Redis data structure kept in the Redis L2 only: the L1 never holds it, ``get`` does not see
it, and an L2 that is not Redis raises :class:`~tieredcache.errors.UnsupportedOperationError`.
Members are stored serialized (as the cache's L2 stores values, so with the same
serializer, compressor and signature); scores are plain Redis floats.
"""

from __future__ import annotations

import typing as t

__all__ = ["SortedSetCommands"]

_Score = t.Union[float, str]


class SortedSetCommands:
    """django-redis's sorted-set methods (a mixin of the Django backend, through
    :class:`~tieredcache.contrib.django_redis_api.DjangoRedisAPI`)."""

    if t.TYPE_CHECKING:

        def _redis(self) -> t.Any: ...
        def _rkey(self, key: t.Any, version: int | None = None) -> bytes: ...
        def _encode(self, value: t.Any) -> bytes: ...
        def _decode(self, data: bytes) -> t.Any: ...

    def _zclient(self) -> t.Any:
        return self._redis().client

    def _scored(self, result: t.Any, withscores: bool) -> list[t.Any]:
        if withscores:
            return [(self._decode(member), score) for member, score in result]
        return [self._decode(member) for member in result]

    def _popped(self, result: t.Any, count: int | None) -> t.Any:
        if not result:
            return None if count is None else []
        decoded = [(self._decode(member), score) for member, score in result]
        return decoded[0] if count is None else decoded

    def zadd(
        self,
        key: t.Any,
        mapping: t.Mapping[t.Any, float],
        nx: bool = False,
        xx: bool = False,
        ch: bool = False,
        incr: bool = False,
        gt: bool = False,
        lt: bool = False,
        version: int | None = None,
    ) -> int | float | None:
        """Add ``mapping``'s members with their scores to the sorted set ``key``.

        :returns: how many members were added (changed, with ``ch``); with ``incr``, the
            member's new score, or ``None`` when ``nx``/``xx`` stopped the update.
        """
        encoded = {self._encode(member): score for member, score in mapping.items()}
        return t.cast(
            "int | float | None",
            self._zclient().zadd(
                self._rkey(key, version), encoded, nx=nx, xx=xx, ch=ch, incr=incr, gt=gt, lt=lt
            ),
        )

    def zcard(self, key: t.Any, version: int | None = None) -> int:
        """The number of members of the sorted set ``key``."""
        return int(self._zclient().zcard(self._rkey(key, version)))

    def zcount(self, key: t.Any, min: _Score, max: _Score, version: int | None = None) -> int:
        """How many members score between ``min`` and ``max`` (Redis bounds: ``"-inf"``,
        ``"(1"``...)."""
        return int(self._zclient().zcount(self._rkey(key, version), min, max))

    def zincrby(self, key: t.Any, amount: float, value: t.Any, version: int | None = None) -> float:
        """Add ``amount`` to the score of ``value`` (a missing member starts at 0); the new
        score."""
        return float(self._zclient().zincrby(self._rkey(key, version), amount, self._encode(value)))

    def zpopmax(self, key: t.Any, count: int | None = None, version: int | None = None) -> t.Any:
        """Remove and return the highest-scoring ``(member, score)``, or ``None`` when the set
        is empty; with ``count``, a list of up to ``count`` pairs."""
        return self._popped(self._zclient().zpopmax(self._rkey(key, version), count), count)

    def zpopmin(self, key: t.Any, count: int | None = None, version: int | None = None) -> t.Any:
        """As :meth:`zpopmax`, for the lowest scores."""
        return self._popped(self._zclient().zpopmin(self._rkey(key, version), count), count)

    def zrange(
        self,
        key: t.Any,
        start: int,
        end: int,
        desc: bool = False,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[t.Any]:
        """The members ranked ``start`` to ``end`` (inclusive; negative counts from the
        end), lowest score first unless ``desc``; ``(member, score)`` pairs with
        ``withscores``."""
        result = self._zclient().zrange(
            self._rkey(key, version),
            start,
            end,
            desc=desc,
            withscores=withscores,
            score_cast_func=score_cast_func,
        )
        return self._scored(result, withscores)

    def zrangebyscore(
        self,
        key: t.Any,
        min: _Score,
        max: _Score,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[t.Any]:
        """The members scoring between ``min`` and ``max``, lowest first; ``start`` and
        ``num`` page through them."""
        result = self._zclient().zrangebyscore(
            self._rkey(key, version),
            min,
            max,
            start=start,
            num=num,
            withscores=withscores,
            score_cast_func=score_cast_func,
        )
        return self._scored(result, withscores)

    def zrank(
        self, key: t.Any, value: t.Any, withscore: bool = False, version: int | None = None
    ) -> t.Any:
        """The rank of ``value`` (0 for the lowest score), or ``None`` if it is not a
        member; ``[rank, score]`` with ``withscore``."""
        return self._zclient().zrank(
            self._rkey(key, version), self._encode(value), withscore=withscore
        )

    def zrem(self, key: t.Any, *values: t.Any, version: int | None = None) -> int:
        """Remove ``values`` from the sorted set ``key``; how many were members."""
        encoded = [self._encode(value) for value in values]
        return int(self._zclient().zrem(self._rkey(key, version), *encoded))

    def zremrangebyscore(
        self, key: t.Any, min: _Score, max: _Score, version: int | None = None
    ) -> int:
        """Remove the members scoring between ``min`` and ``max``; how many were removed."""
        return int(self._zclient().zremrangebyscore(self._rkey(key, version), min, max))

    def zrevrange(
        self,
        key: t.Any,
        start: int,
        end: int,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[t.Any]:
        """As :meth:`zrange`, highest score first."""
        result = self._zclient().zrevrange(
            self._rkey(key, version),
            start,
            end,
            withscores=withscores,
            score_cast_func=score_cast_func,
        )
        return self._scored(result, withscores)

    def zrevrangebyscore(
        self,
        key: t.Any,
        max: _Score,
        min: _Score,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: type = float,
        version: int | None = None,
    ) -> list[t.Any]:
        """As :meth:`zrangebyscore`, highest first (note: ``max`` comes before ``min``)."""
        result = self._zclient().zrevrangebyscore(
            self._rkey(key, version),
            max,
            min,
            start=start,
            num=num,
            withscores=withscores,
            score_cast_func=score_cast_func,
        )
        return self._scored(result, withscores)

    def zscore(self, key: t.Any, value: t.Any, version: int | None = None) -> float | None:
        """The score of ``value``, or ``None`` if it is not a member."""
        score = self._zclient().zscore(self._rkey(key, version), self._encode(value))
        return None if score is None else float(score)
