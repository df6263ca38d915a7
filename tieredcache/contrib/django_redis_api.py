"""
django-redis's API on the Django backend
========================================

:class:`DjangoRedisAPI` gives :class:`tieredcache.contrib.django.TieredCache` the methods
that django-redis's ``RedisCache`` adds to Django's cache API, with django-redis's
semantics, so that code written for django-redis runs unchanged:

- expiry: :meth:`~DjangoRedisAPI.ttl`, ``pttl``, ``expire``, ``pexpire``, ``expire_at``,
  ``pexpire_at``, ``persist``. They change the entry in L2 and cap this process's L1 copy
  at the new expiry; the backplane tells the other processes.
- keys: ``delete_pattern``, ``iter_keys``, ``keys`` (see :mod:`tieredcache.patterns`).
- ``lock``: a redis-py ``Lock`` on the Redis L2.
- hashes, sets and sorted sets (``hset``, ``sadd``, ``zadd``, ...; the last in
  :mod:`tieredcache.contrib.django_redis_sorted_sets`): Redis data structures, kept in the
  Redis L2 only; they are not cache entries, so L1 never holds them and ``get`` does not
  see them. ``has_key`` does, as with django-redis (so does it see a lock's key).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import typing as t

from django.core.cache.backends.base import DEFAULT_TIMEOUT

from tieredcache import patterns
from tieredcache.contrib.django_redis_sorted_sets import SortedSetCommands
from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import UnsupportedOperationError
from tieredcache.keyglob import compile_glob
from tieredcache.keyglob import escape_glob

if t.TYPE_CHECKING:
    from tieredcache.tiered import TieredCache as CoreCache

__all__ = ["DjangoRedisAPI", "RedisClientAccess"]


class DjangoRedisAPI(SortedSetCommands):
    """django-redis's extra cache methods (a mixin of the Django backend)."""

    _tiered: CoreCache
    key_prefix: str
    version: int
    default_timeout: float | None
    key_func: t.Callable[..., str]

    if t.TYPE_CHECKING:

        def make_and_validate_key(self, key: t.Any, version: int | None = None) -> t.Any: ...

    # -- expiry -------------------------------------------------------------------------

    def _remaining(self, key: t.Any, version: int | None) -> float | None:
        """Seconds left (``None``: no expiry), or ``-1.0`` when the key holds nothing."""
        made = self.make_and_validate_key(key, version=version)
        layer: t.Any = self._tiered
        while hasattr(layer, "l2"):  # the authoritative tier knows the exact expiry
            layer = layer.l2
        entry = layer.get_entry(made)
        if entry is None:
            return self._structure_remaining(key, version)
        if entry.expires_at is None:
            return None
        return max(float(entry.expires_at) - self._tiered.timer(), 0.0)

    def _structure_remaining(self, key: t.Any, version: int | None) -> float | None:
        """:meth:`_remaining` of a key that holds no entry, from Redis itself: a hash, a
        set, a sorted set or a lock has its own TTL there."""
        redis = self._redis_l2()
        if redis is None:
            return -1.0
        ms = int(redis.client.pttl(self._rkey(key, version)))
        if ms == -2:  # no such key
            return -1.0
        return None if ms == -1 else ms / 1000.0

    def ttl(self, key: t.Any, version: int | None = None) -> int | None:
        """Seconds until ``key`` expires (rounded); ``None`` if it never does; ``0`` if it
        holds no value."""
        left = self._remaining(key, version)
        if left is None:
            return None
        return 0 if left < 0 else int(left + 0.5)

    def pttl(self, key: t.Any, version: int | None = None) -> int | None:
        """As :meth:`ttl`, in milliseconds."""
        left = self._remaining(key, version)
        if left is None:
            return None
        return 0 if left < 0 else int(left * 1000)

    def _expire_at(self, key: t.Any, expires_at: float | None, version: int | None) -> bool:
        made = self.make_and_validate_key(key, version=version)
        try:
            if self._tiered.touch_entry(made, expires_at):
                return True
        except BackendResponseError:  # WRONGTYPE: a Redis hash, set or sorted set
            pass
        # No entry: a Redis structure or a lock under the key has its own TTL, as in
        # django-redis.
        redis = self._redis_l2()
        if redis is None:
            return False
        client, rkey = redis.client, self._rkey(key, version)
        if expires_at is None:
            return bool(client.persist(rkey)) or bool(client.exists(rkey))
        ms = math.ceil((expires_at - self._tiered.timer()) * 1000)
        if ms <= 0:
            return bool(client.delete(rkey))
        return bool(client.pexpire(rkey, ms))

    def expire(self, key: t.Any, timeout: t.Any, version: int | None = None) -> bool:
        """Let ``key`` expire in ``timeout`` seconds (``0`` or less deletes it); False if it
        holds no value."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return self.persist(key, version=version)
        return self._expire_at(key, self._tiered.timer() + _seconds(timeout), version)

    def pexpire(self, key: t.Any, timeout: t.Any, version: int | None = None) -> bool:
        """As :meth:`expire`, with ``timeout`` in milliseconds."""
        if timeout is DEFAULT_TIMEOUT:
            return self.expire(key, timeout, version=version)
        return self._expire_at(key, self._tiered.timer() + _seconds(timeout) / 1000, version)

    def expire_at(self, key: t.Any, when: t.Any, version: int | None = None) -> bool:
        """Let ``key`` expire at ``when``: epoch seconds or a ``datetime``."""
        return self._expire_at(key, _epoch(when, 1.0), version)

    def pexpire_at(self, key: t.Any, when: t.Any, version: int | None = None) -> bool:
        """Let ``key`` expire at ``when``: epoch milliseconds or a ``datetime``."""
        return self._expire_at(key, _epoch(when, 1000.0), version)

    def persist(self, key: t.Any, version: int | None = None) -> bool:
        """Remove ``key``'s expiry; False if it holds no value."""
        return self._expire_at(key, None, version)

    # -- keys ---------------------------------------------------------------------------

    def _make_pattern(self, pattern: str, version: int | None, prefix: str | None) -> str:
        prefix = self.key_prefix if prefix is None else prefix
        version = self.version if version is None else version
        return self.key_func(pattern, escape_glob(prefix), escape_glob(str(version)))

    def delete_pattern(
        self,
        pattern: str,
        version: int | None = None,
        prefix: str | None = None,
        itersize: int | None = None,
    ) -> int:
        """Delete the keys matching the glob ``pattern`` from every tier and process.

        :param itersize: accepted for django-redis; the backends choose their batch size.
        :returns: how many keys were deleted.
        :raises UnsupportedOperationError: the L2 is memcached.
        """
        return patterns.invalidate_pattern(
            self._tiered, self._make_pattern(pattern, version, prefix)
        )

    def iter_keys(
        self, search: str, itersize: int | None = None, version: int | None = None
    ) -> t.Iterator[str]:
        """The keys (as given to ``set``) matching the glob ``search``.

        :raises UnsupportedOperationError: the L2 is memcached.
        """
        made = self._make_pattern(search, version, None)
        for key in patterns.iter_keys(self._tiered, made):
            yield key.split(":", 2)[2] if key.count(":") >= 2 else key

    def keys(self, search: str, version: int | None = None) -> list[str]:
        """Every key matching the glob ``search`` (see :meth:`iter_keys`)."""
        return list(self.iter_keys(search, version=version))

    # -- Redis-only commands --------------------------------------------------------------

    def _clear_structures(self) -> None:
        """Delete this alias's Redis hashes, sets and locks (``clear()`` keeps other data)."""
        try:
            redis_l2 = self._redis()
        except UnsupportedOperationError:
            return
        redis_l2.invalidate_pattern(self.key_func("*", escape_glob(self.key_prefix), "*"))

    def _in_redis_only(self, made: str) -> bool:
        """Whether the Redis L2 holds the made key ``made`` as something that is not a
        readable entry (a lock, a hash, a set...): ``has_key``'s answer once the entry read
        has missed, as django-redis's ``has_key`` is ``EXISTS``. False for other L2s.

        :raises BackendError: Redis failed.
        """
        try:
            layer = self._redis()
        except UnsupportedOperationError:
            return False
        import redis

        try:
            return bool(layer.client.exists(layer.prefix.encode() + made.encode()))
        except redis.exceptions.TimeoutError as exc:
            raise BackendTimeoutError(f"EXISTS: {exc}", backend="redis") from exc
        except redis.exceptions.ConnectionError as exc:
            raise BackendUnavailableError(f"EXISTS: {exc}", backend="redis") from exc
        except redis.exceptions.RedisError as exc:
            raise BackendError(f"EXISTS: {exc}", backend="redis") from exc

    @property
    def client(self) -> RedisClientAccess:
        """django-redis's ``cache.client``, for its ``get_client()`` (the redis-py client of
        the Redis L2) and ``make_key()``; django-redis's other client internals are not
        there."""
        return RedisClientAccess(self)

    def _redis(self) -> t.Any:
        from tieredcache.backends.redis import RedisBackend

        layer: t.Any = self._tiered
        while not isinstance(layer, RedisBackend) and hasattr(layer, "l2"):
            layer = layer.l2
        if not isinstance(layer, RedisBackend):
            raise UnsupportedOperationError(
                "locks, hashes, sets and sorted sets are Redis commands, and this cache's L2 "
                "is not Redis"
            )
        return layer

    def _redis_l2(self) -> t.Any:
        """The Redis L2, or ``None`` when L2 is another store."""
        try:
            return self._redis()
        except UnsupportedOperationError:
            return None

    def _rkey(self, key: t.Any, version: int | None = None) -> bytes:
        made = self.make_and_validate_key(key, version=version)
        return t.cast(bytes, self._redis().prefix.encode() + made.encode())

    def _encode(self, value: t.Any) -> bytes:
        return t.cast(bytes, self._redis().serializer.dumps(value))

    def _decode(self, data: bytes) -> t.Any:
        return self._redis().serializer.loads(data)

    def lock(
        self,
        key: t.Any,
        version: int | None = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        thread_local: bool = True,
    ) -> t.Any:
        """A redis-py ``Lock`` named by ``key`` on the Redis L2 (django-redis's ``lock``)."""
        return self._redis().client.lock(
            self._rkey(key, version),
            timeout=timeout,
            sleep=sleep,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            thread_local=thread_local,
        )

    def hset(
        self,
        key: t.Any,
        field: t.Any = None,
        value: t.Any = None,
        mapping: t.Mapping[t.Any, t.Any] | None = None,
        version: int | None = None,
    ) -> int:
        """Set fields of the hash ``key``; how many fields were added."""
        encoded = None if mapping is None else {f: self._encode(v) for f, v in mapping.items()}
        return int(
            self._redis().client.hset(
                self._rkey(key, version),
                key=field,
                value=None if value is None else self._encode(value),
                mapping=encoded,
            )
        )

    def hdel(self, key: t.Any, field: t.Any, version: int | None = None) -> int:
        """Remove ``field`` from the hash ``key``; how many fields were removed."""
        return int(self._redis().client.hdel(self._rkey(key, version), field))

    def hlen(self, key: t.Any, version: int | None = None) -> int:
        """The number of fields in the hash ``key``."""
        return int(self._redis().client.hlen(self._rkey(key, version)))

    def hkeys(self, key: t.Any, version: int | None = None) -> list[str]:
        """The fields of the hash ``key``."""
        return [_text(f) for f in self._redis().client.hkeys(self._rkey(key, version))]

    def hexists(self, key: t.Any, field: t.Any, version: int | None = None) -> bool:
        """Whether the hash ``key`` has ``field``."""
        return bool(self._redis().client.hexists(self._rkey(key, version), field))

    def sadd(self, key: t.Any, *values: t.Any, version: int | None = None) -> int:
        """Add ``values`` to the set ``key``; how many were new."""
        encoded = [self._encode(v) for v in values]
        return int(self._redis().client.sadd(self._rkey(key, version), *encoded))

    def scard(self, key: t.Any, version: int | None = None) -> int:
        """The number of members of the set ``key``."""
        return int(self._redis().client.scard(self._rkey(key, version)))

    def _members(self, raw: t.Iterable[bytes]) -> set[t.Any]:
        return {self._decode(v) for v in raw}

    def sdiff(self, *keys: t.Any, version: int | None = None) -> set[t.Any]:
        """The members of the first set that are in none of the others."""
        return self._members(self._redis().client.sdiff(*[self._rkey(k, version) for k in keys]))

    def sdiffstore(
        self,
        dest: t.Any,
        *keys: t.Any,
        version_dest: int | None = None,
        version_keys: int | None = None,
    ) -> int:
        """Store :meth:`sdiff` of ``keys`` in ``dest``; its size."""
        nkeys = [self._rkey(k, version_keys) for k in keys]
        return int(self._redis().client.sdiffstore(self._rkey(dest, version_dest), *nkeys))

    def sinter(self, *keys: t.Any, version: int | None = None) -> set[t.Any]:
        """The members common to every set."""
        return self._members(self._redis().client.sinter(*[self._rkey(k, version) for k in keys]))

    def sinterstore(self, dest: t.Any, *keys: t.Any, version: int | None = None) -> int:
        """Store :meth:`sinter` of ``keys`` in ``dest``; its size."""
        nkeys = [self._rkey(k, version) for k in keys]
        return int(self._redis().client.sinterstore(self._rkey(dest, version), *nkeys))

    def sunion(self, *keys: t.Any, version: int | None = None) -> set[t.Any]:
        """The members of any of the sets."""
        return self._members(self._redis().client.sunion(*[self._rkey(k, version) for k in keys]))

    def sunionstore(self, dest: t.Any, *keys: t.Any, version: int | None = None) -> int:
        """Store :meth:`sunion` of ``keys`` in ``dest``; its size."""
        nkeys = [self._rkey(k, version) for k in keys]
        return int(self._redis().client.sunionstore(self._rkey(dest, version), *nkeys))

    def sismember(self, key: t.Any, member: t.Any, version: int | None = None) -> bool:
        """Whether ``member`` is in the set ``key``."""
        return bool(self._redis().client.sismember(self._rkey(key, version), self._encode(member)))

    def smismember(self, key: t.Any, *members: t.Any, version: int | None = None) -> list[bool]:
        """For each of ``members``, whether it is in the set ``key``."""
        encoded = [self._encode(m) for m in members]
        return [bool(v) for v in self._redis().client.smismember(self._rkey(key, version), encoded)]

    def smembers(self, key: t.Any, version: int | None = None) -> set[t.Any]:
        """The members of the set ``key``."""
        return self._members(self._redis().client.smembers(self._rkey(key, version)))

    def smove(
        self, source: t.Any, destination: t.Any, member: t.Any, version: int | None = None
    ) -> bool:
        """Move ``member`` from the set ``source`` to ``destination``; False if absent."""
        return bool(
            self._redis().client.smove(
                self._rkey(source, version), self._rkey(destination), self._encode(member)
            )
        )

    def spop(self, key: t.Any, count: int | None = None, version: int | None = None) -> t.Any:
        """Remove and return a random member (a set of ``count`` members if given)."""
        result = self._redis().client.spop(self._rkey(key, version), count)
        if result is None:
            return None
        return self._members(result) if isinstance(result, list) else self._decode(result)

    def srandmember(
        self, key: t.Any, count: int | None = None, version: int | None = None
    ) -> t.Any:
        """A random member (a list of ``count`` members if given), not removed."""
        result = self._redis().client.srandmember(self._rkey(key, version), count)
        if result is None:
            return None
        if isinstance(result, list):
            return [self._decode(v) for v in result]
        return self._decode(result)

    def srem(self, key: t.Any, *members: t.Any, version: int | None = None) -> int:
        """Remove ``members`` from the set ``key``; how many were there."""
        encoded = [self._encode(m) for m in members]
        return int(self._redis().client.srem(self._rkey(key, version), *encoded))

    def sscan(
        self,
        key: t.Any,
        match: str | None = None,
        count: int | None = 10,
        version: int | None = None,
    ) -> set[t.Any]:
        """The members of the set ``key`` (whose text matches the glob ``match``)."""
        return set(self.sscan_iter(key, match=match, count=count, version=version))

    def sscan_iter(
        self,
        key: t.Any,
        match: str | None = None,
        count: int | None = 10,
        version: int | None = None,
    ) -> t.Iterator[t.Any]:
        """Iterate the members of the set ``key`` (whose text matches the glob ``match``).

        Members are stored serialized, so ``match`` is applied to each decoded member's
        ``str``, here rather than by the server.
        """
        test = None if match is None else compile_glob(match).match
        for raw in self._redis().client.sscan_iter(self._rkey(key, version), count=count):
            value = self._decode(raw)
            if test is None or test(str(value)):
                yield value


class RedisClientAccess:
    """What ``cache.client`` gives django-redis code: the raw redis-py client and keys."""

    def __init__(self, cache: DjangoRedisAPI) -> None:
        self._cache = cache

    def get_client(self, write: bool = True, **_: t.Any) -> t.Any:
        """The redis-py client of the Redis L2 (keys there carry the L2 prefix).

        :raises UnsupportedOperationError: the L2 is not Redis.
        """
        return self._cache._redis().client

    def make_key(self, key: t.Any, version: int | None = None, prefix: str | None = None) -> str:
        """The key as the backend stores it (``KEY_PREFIX``, ``VERSION``, ``KEY_FUNCTION``)."""
        prefix = self._cache.key_prefix if prefix is None else prefix
        version = self._cache.version if version is None else version
        return self._cache.key_func(key, prefix, version)


def _seconds(timeout: t.Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"a timeout must be a number, not {type(timeout).__name__}")
    return float(timeout)


def _epoch(when: t.Any, per_second: float) -> float:
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            return time.mktime(when.timetuple()) + when.microsecond / 1e6
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, (int, float)) or math.isnan(when):
        raise TypeError(f"when must be a datetime or a number, not {type(when).__name__}")
    return float(when) / per_second


def _text(raw: t.Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
