"""
Redis lock
==========

:class:`RedisLock` makes ``get_or_set`` single-flight across processes: of all the
processes that miss the same key at once, one (the *leader*) runs the loader, and the others
wait for its result to appear in the shared cache.

The lock is the classic single-instance Redis lock: ``SET key token NX PX ttl`` to acquire,
and Lua scripts that delete or extend the key only while it still holds the caller's
token, so a holder whose lock expired can never release or extend someone else's. The
lock is advisory and expires after ``ttl``: choose a ``ttl`` longer than the slowest
loader, or :meth:`RedisLock.extend` it while loading. Waiting is polling with exponential
backoff (capped by the lock's remaining life), not pub/sub.

Tokens are plain strings and not bound to a thread (unlike ``threading.Lock``, and like
dogpile's ``distributed_lock`` with ``thread_local_lock=False``): a lock acquired in one
thread may be released or extended from another, for example by the pool thread a
background refresh was handed to. Whoever holds the token is responsible for releasing it.

Using it in ``get_or_set``
--------------------------

:meth:`RedisLock.single_flight` is the whole protocol, for a composition to call on an L1
and L2 miss (inside its in-process single flight, so each process sends one contender)::

    def get_or_set(self, key, loader, ttl=DEFAULT, *, lock=None, wait_timeout=None):
        entry = self.get_entry(key)
        if entry is not None:
            return entry.value
        if lock is None:
            return super().get_or_set(key, loader, ttl, wait_timeout=wait_timeout)

        def load() -> Any:
            value = loader()
            self.set(key, value, ttl)
            return value

        return self._flights.run(
            key,
            lambda: lock.single_flight(
                key, lambda: self.get_entry(key), load, wait_timeout=wait_timeout
            ),
            wait_timeout,
        )

The leader re-checks the cache once it holds the lock (another leader may have stored the
value just before), runs the loader, stores the value, and releases the lock. A waiter
polls until the lock is free, then reads the cache; if the value is there it returns it,
and if not (the leader failed, or the value is already gone) it tries to become the leader
itself. A loader's exception reaches only the callers in the leader's process. A waiter
whose wait runs out raises :class:`~tieredcache.errors.LockTimeoutError`, or runs the loader
itself with ``load_on_timeout=True``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
import typing as t

from tieredcache.entry import Entry
from tieredcache.errors import ConfigurationError
from tieredcache.errors import LockTimeoutError
from tieredcache.redis.connect import DRIVER_ERRORS
from tieredcache.redis.connect import close_all
from tieredcache.redis.connect import connect_url
from tieredcache.redis.connect import describe
from tieredcache.redis.connect import translate

__all__ = ["RedisLock"]

logger = logging.getLogger("tieredcache.redislock")

T = t.TypeVar("T")

# KEYS[1]: the lock. ARGV[1]: the token. Deletes the lock only while it holds the token.
_RELEASE_SCRIPT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1]: the lock. ARGV: the token, the new TTL in ms. Extends only while owned.
_EXTEND_SCRIPT = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class RedisLock:
    """Named, expiring, cross-process locks in Redis, for single-flight loading.

    Thread-safe: one instance serves every thread and every key; tokens are not tied to
    the thread that acquired them.

    :param client: a ``redis.Redis`` (or ``RedisCluster``) client; the caller owns it and
        :meth:`close` leaves it open. Sharing the L2 backend's client is fine.
    :param prefix: prepended to every lock name in Redis.
    :param ttl: seconds a lock lives unless released or extended; it bounds how long a
        crashed holder blocks the others.
    :param wait_timeout: the default number of seconds :meth:`hold` and
        :meth:`single_flight` wait for another holder.
    :param poll: ``(first, most)`` seconds between two checks while waiting; the pause
        doubles up to ``most``.
    :raises ConfigurationError: a bad option.
    """

    def __init__(
        self,
        client: t.Any,
        *,
        prefix: str = "tieredcache:lock:",
        ttl: float = 10.0,
        wait_timeout: float = 10.0,
        poll: tuple[float, float] = (0.005, 0.1),
    ) -> None:
        if client is None:
            raise ConfigurationError("RedisLock needs a client; use RedisLock.from_url(url)")
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
        self._client: t.Any = client
        self.prefix = prefix
        self.ttl = _seconds(ttl, "ttl")
        self.wait_timeout = _seconds(wait_timeout, "wait_timeout", zero=True)
        try:
            first, most = poll
        except (TypeError, ValueError):
            raise ConfigurationError("poll must be a (first, most) pair of seconds") from None
        self.poll = (_seconds(first, "poll"), _seconds(most, "poll"))
        if self.poll[0] > self.poll[1]:
            raise ConfigurationError(f"poll must be (first, most) with first <= most: {poll!r}")
        self._prefix_bytes = prefix.encode("utf-8", "surrogatepass")
        self._target = describe(client)
        self._closers: list[t.Callable[[], None]] = []
        self._release_script = client.register_script(_RELEASE_SCRIPT)
        self._extend_script = client.register_script(_EXTEND_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float | None = 5.0,
        connect_timeout: float | None = 2.0,
        **options: t.Any,
    ) -> RedisLock:
        """A lock manager with a client of its own, closed by :meth:`close`.

        Takes the URLs :meth:`RedisBackend.from_url <tieredcache.RedisBackend.from_url>`
        takes; ``options`` are this class's keyword arguments.
        """
        client, closers = connect_url(
            url, {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
        )
        try:
            lock = cls(client, **options)
        except BaseException:
            close_all(closers)
            raise
        lock._closers = closers
        return lock

    @property
    def client(self) -> t.Any:
        """The redis-py client."""
        return self._client

    def _name(self, key: str) -> bytes:
        if not isinstance(key, str):
            raise ConfigurationError(f"lock keys must be str, not {type(key).__name__}")
        return self._prefix_bytes + key.encode("utf-8", "surrogatepass")

    @contextlib.contextmanager
    def _map_errors(self) -> t.Iterator[None]:
        """Translate driver errors into :class:`~tieredcache.errors.BackendError`."""
        try:
            yield
        except DRIVER_ERRORS as exc:
            raise translate(exc, self._target) from exc

    # -- primitives -------------------------------------------------------------------

    def acquire(self, key: str, ttl: float | None = None) -> str | None:
        """Take the lock named ``key`` if it is free: its token, or ``None`` if it is held.

        Never waits. The lock lives ``ttl`` seconds (default :attr:`ttl`) unless released.

        :raises BackendError: Redis failed (the lock may or may not have been taken; if it
            was, it expires after ``ttl``).
        """
        name = self._name(key)
        px = _milliseconds(self.ttl if ttl is None else _seconds(ttl, "ttl"))
        token = secrets.token_hex(16)
        with self._map_errors():
            taken = self._client.set(name, token, nx=True, px=px)
        return token if taken else None

    def release(self, key: str, token: str) -> bool:
        """Release the lock if ``token`` still holds it; True if it did.

        False means the lock had expired (and may belong to another holder by now): it is
        left alone.

        :raises BackendError: Redis failed; the lock expires after its TTL.
        """
        name = self._name(key)
        with self._map_errors():
            return bool(self._release_script(keys=[name], args=[token]))

    def extend(self, key: str, token: str, ttl: float | None = None) -> bool:
        """Give the lock ``ttl`` more seconds from now, if ``token`` still holds it.

        :raises BackendError: Redis failed.
        """
        name = self._name(key)
        px = _milliseconds(self.ttl if ttl is None else _seconds(ttl, "ttl"))
        with self._map_errors():
            return bool(self._extend_script(keys=[name], args=[token, px]))

    def locked(self, key: str) -> bool:
        """True if someone holds the lock named ``key`` right now."""
        name = self._name(key)
        with self._map_errors():
            return bool(self._client.exists(name))

    def wait(self, key: str, timeout: float | None = None) -> bool:
        """Wait until the lock named ``key`` is free; True if it is, False on timeout.

        Polls with exponential backoff from ``poll[0]`` to ``poll[1]`` seconds, never
        sleeping past the lock's own expiry. Does not take the lock: another caller may
        take it first, so re-check (or :meth:`acquire`) after a True.

        :param timeout: seconds (default :attr:`wait_timeout`; ``0`` checks once).
        :raises BackendError: Redis failed.
        """
        name = self._name(key)
        limit = self.wait_timeout if timeout is None else _seconds(timeout, "timeout", zero=True)
        deadline = time.monotonic() + limit
        pause, most = self.poll
        while True:
            with self._map_errors():
                left_ms = self._client.pttl(name)
            if left_ms == -2:  # no such key: free
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sleep = min(pause, remaining)
            if left_ms >= 0:  # -1 would mean a lock without expiry: poll as usual
                sleep = min(sleep, left_ms / 1000.0 + 0.001)
            time.sleep(sleep)
            pause = min(pause * 2.0, most)

    # -- helpers ----------------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self, key: str, *, wait_timeout: float | None = None) -> t.Iterator[str]:
        """Hold the lock named ``key`` for the ``with`` block; yields the token.

        Waits up to ``wait_timeout`` seconds (default :attr:`wait_timeout`) for another
        holder. On exit the lock is released if it is still ours; a failure to release is
        logged, not raised (the lock then expires after its TTL).

        :raises LockTimeoutError: the lock stayed taken for ``wait_timeout`` seconds.
        :raises BackendError: Redis failed while acquiring.
        """
        token = self._acquire_waiting(key, wait_timeout)
        try:
            yield token
        finally:
            self._release_quietly(key, token)

    def single_flight(
        self,
        key: str,
        lookup: t.Callable[[], Entry | None],
        load: t.Callable[[], T],
        *,
        wait_timeout: float | None = None,
        load_on_timeout: bool = False,
    ) -> t.Any:
        """The cached value of ``key``, loading it in one process at a time.

        ``lookup()`` reads the cache (an :class:`~tieredcache.Entry` or ``None``);
        ``load()`` runs the loader, stores its value and returns it. The caller that
        takes the lock checks ``lookup()`` again, then calls ``load()`` on a miss and
        releases the lock; the others wait for the lock to be free and read ``lookup()``,
        and on a miss contend again. ``load()``'s exception reaches only its caller.

        ``lookup()`` must see what ``load()`` stored in *other* processes (read through to
        the shared L2). One loader at a time holds while loaders finish within the lock's
        ``ttl``; a longer one should :meth:`extend` the lock, or a second leader may start.

        :param wait_timeout: seconds, in all, to wait for other holders (default
            :attr:`wait_timeout`).
        :param load_on_timeout: on timeout, call ``load()`` without the lock instead of
            raising.
        :raises LockTimeoutError: the wait ran out (unless ``load_on_timeout``).
        :raises BackendError: Redis failed while acquiring or checking the lock.
        """
        limit = self._limit(wait_timeout)
        deadline = time.monotonic() + limit
        while True:
            token = self.acquire(key)
            if token is not None:
                try:
                    entry = lookup()  # a leader that finished just now already stored it
                    if entry is not None:
                        return entry.value
                    return load()
                finally:
                    self._release_quietly(key, token)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.wait(key, remaining):
                if load_on_timeout:
                    logger.warning("redislock: no lock on %r in %gs; loading anyway", key, limit)
                    return load()
                raise LockTimeoutError(f"the lock on {key!r} stayed taken for {limit:g}s")
            entry = lookup()
            if entry is not None:
                return entry.value

    def _acquire_waiting(self, key: str, wait_timeout: float | None) -> str:
        limit = self._limit(wait_timeout)
        deadline = time.monotonic() + limit
        while True:
            token = self.acquire(key)
            if token is not None:
                return token
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.wait(key, remaining):
                raise LockTimeoutError(f"the lock on {key!r} stayed taken for {limit:g}s")

    def _limit(self, wait_timeout: float | None) -> float:
        if wait_timeout is None:
            return self.wait_timeout
        return _seconds(wait_timeout, "wait_timeout", zero=True)

    def _release_quietly(self, key: str, token: str) -> None:
        try:
            if not self.release(key, token):
                logger.warning(
                    "redislock: the lock on %r expired before it was released; "
                    "its ttl (%gs) may be shorter than the work it guards",
                    key,
                    self.ttl,
                )
        except Exception:
            logger.warning(
                "redislock: could not release the lock on %r; it expires after its ttl",
                key,
                exc_info=True,
            )

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the client if this lock manager created it (:meth:`from_url`)."""
        closers, self._closers = self._closers, []
        close_all(closers)

    def __enter__(self) -> RedisLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisLock {self._target} prefix={self.prefix!r} ttl={self.ttl:g}>"


def _seconds(value: t.Any, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, not {value!r}")
    if math.isinf(value) or value < 0 or (value == 0 and not zero):
        raise ConfigurationError(
            f"{name} must be a finite, {'non-negative' if zero else 'positive'} number "
            f"of seconds, not {value!r}"
        )
    return float(value)


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000.0))
