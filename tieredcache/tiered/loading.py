"""
Loaders the cache controls
==========================

What ``get_or_set`` and ``memoize`` add around a loader:

* :class:`Loaded`: a loader may return ``Loaded(value, ttl=..., tags=..., store=...)`` to
  choose the TTL and tags from the value, or not to store it at all;
* ``hard_timeout``: a caller waits at most that long for a loader and then gets
  :class:`~tieredcache.errors.LoaderTimeoutError`; the loader goes on in the background and
  stores its result;
* ``soft_timeout``: a read of a stale value runs the refresh and waits up to that long for
  it; a fresh result in time is returned, otherwise the stale value, and the refresh goes on
  in the background and stores its result as an ordered write;
* ``refresh_ahead``: an entry loaded with ``refresh_ahead=0.8`` becomes due for a
  background refresh after 80% of its TTL (its ``stale_at``), so a hot key is reloaded
  before it expires.

Loaders that outlive their caller run on a small thread pool of this module (a new one
after a fork; its threads are joined at interpreter exit), so that a slow loader never
holds a thread of the composition's executor.
"""

from __future__ import annotations

import concurrent.futures
import threading
import typing as t

from tieredcache import lifecycle
from tieredcache.entry import DEFAULT
from tieredcache.errors import ConfigurationError
from tieredcache.errors import LoaderTimeoutError
from tieredcache.tiered.tags import check_tags

__all__ = ["LoadOptions", "Loaded", "background_run", "resolve", "wait_bounded"]

_MAX_LOADERS = 16


class Loaded:
    """A loader's result with the way to cache it.

    :param value: the value returned to the caller.
    :param ttl: the TTL to store it under (``DEFAULT``: the call's).
    :param tags: the tags to store it with (``None``: the call's).
    :param store: ``False`` returns the value without storing it.
    """

    __slots__ = ("store", "tags", "ttl", "value")

    def __init__(
        self, value: t.Any, ttl: t.Any = DEFAULT, tags: t.Any = None, store: bool = True
    ) -> None:
        self.value = value
        self.ttl = ttl
        self.tags = None if tags is None else check_tags(tags)
        self.store = bool(store)

    def __repr__(self) -> str:
        return f"Loaded({self.value!r}, ttl={self.ttl!r}, tags={self.tags!r}, store={self.store})"


class LoadOptions:
    """The loader controls of one ``get_or_set`` call (validated).

    :raises ConfigurationError: a timeout is not a positive number, or ``refresh_ahead`` is
        not a fraction in ``(0, 1)``.
    :raises InvalidKeyError: ``tags`` is not a collection of non-empty str.
    """

    __slots__ = ("hard_timeout", "refresh_ahead", "soft_timeout", "tags")

    def __init__(
        self,
        tags: t.Any = (),
        soft_timeout: float | None = None,
        hard_timeout: float | None = None,
        refresh_ahead: float | None = None,
    ) -> None:
        self.tags = check_tags(tags) if tags else ()
        self.soft_timeout = _positive(soft_timeout, "soft_timeout")
        self.hard_timeout = _positive(hard_timeout, "hard_timeout")
        if refresh_ahead is not None and (
            isinstance(refresh_ahead, bool)
            or not isinstance(refresh_ahead, (int, float))
            or not 0 < refresh_ahead < 1
        ):
            raise ConfigurationError(
                f"refresh_ahead must be a fraction of the TTL in (0, 1), not {refresh_ahead!r}"
            )
        self.refresh_ahead = None if refresh_ahead is None else float(refresh_ahead)

    @property
    def stale_wait(self) -> float | None:
        """How long a stale read waits for its refresh (``None``: it does not wait)."""
        if self.soft_timeout is None:
            return None
        if self.hard_timeout is None:
            return self.soft_timeout
        return min(self.soft_timeout, self.hard_timeout)


def _positive(value: t.Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


NO_OPTIONS = LoadOptions()
"""No tags and no loader controls."""


def resolve(
    result: t.Any, ttl: t.Any, tags: tuple[str, ...]
) -> tuple[t.Any, t.Any, tuple[str, ...], bool]:
    """``(value, ttl, tags, store)`` for a loader's ``result`` under the call's ``ttl``
    and ``tags`` (a :class:`Loaded` overrides them)."""
    if type(result) is not Loaded:
        return result, ttl, tags, True
    return (
        result.value,
        ttl if result.ttl is DEFAULT else result.ttl,
        tags if result.tags is None else result.tags,
        result.store,
    )


_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _loaders() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                _MAX_LOADERS, thread_name_prefix="tieredcache-loader"
            )
        return _pool


def _reset_after_fork() -> None:
    global _pool, _pool_lock
    _pool_lock = threading.Lock()
    _pool = None  # the parent's threads do not exist in the child


lifecycle.on_fork(_reset_after_fork, lifecycle.Stage.EXECUTORS)


def background_run(fn: t.Callable[[], t.Any]) -> concurrent.futures.Future[t.Any]:
    """Run ``fn`` on the loader threads; its future."""
    return _loaders().submit(fn)


def wait_bounded(fn: t.Callable[[], t.Any], timeout: float | None, what: str) -> t.Any:
    """``fn()``, run on a loader thread when ``timeout`` is set and waited for that long.

    :raises LoaderTimeoutError: ``timeout`` passed first (``fn`` goes on in the background).
    """
    if timeout is None:
        return fn()
    future = background_run(fn)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        raise LoaderTimeoutError(
            f"the loader of {what} ran longer than its hard_timeout of {timeout} s; it goes on "
            "in the background and stores its result"
        ) from None
