"""
Memoization
===========

``@cache.memoize(ttl=...)`` caches a function's results in a composition through
``get_or_set``, so concurrent calls with the same arguments run the function once
(single-flight), an exception reaches every waiter and is not cached, and ``stale_ttl``,
``tags``, ``soft_timeout``, ``hard_timeout``, ``refresh_ahead`` and
:class:`~tieredcache.Loaded` results work as they do there.

The key is stable across processes and restarts: the function's module and qualified
name, then its arguments bound to its signature (defaults applied, so ``f(1, b=2)``,
``f(1, 2)`` and ``f(1)`` with ``b=2`` as default share an entry), hashed when long. A first
parameter named ``self`` or ``cls`` is left out. An argument whose ``repr`` holds a memory
address gives :class:`~tieredcache.errors.UnstableKeyError` naming it, unless a ``key=``
function builds the key instead.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import re
import typing as t

from tieredcache.entry import DEFAULT
from tieredcache.errors import ConfigurationError
from tieredcache.errors import UnstableKeyError
from tieredcache.tiered.loading import resolve
from tieredcache.tiered.tags import check_tags

__all__ = ["Memoized", "MemoizedMany", "many_memoizer", "memoizer", "stable_repr"]

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

_MAX_PLAIN = 160  # longer argument parts are hashed
_SAFE = re.compile(r"[A-Za-z0-9_.:,()\[\]{}'\"=+\-/<>]*\Z")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_UNSET = object()


def stable_repr(value: t.Any, name: str) -> str:
    """A representation of ``value`` that is the same in every process.

    :raises UnstableKeyError: ``value`` (the argument ``name``) has none.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__module__}.{type(value).__qualname__}.{value.name}"
    if isinstance(value, (tuple, list)):
        inner = ",".join(stable_repr(v, name) for v in value)
        return f"{type(value).__name__}({inner})"
    if isinstance(value, (set, frozenset)):
        inner = ",".join(sorted(stable_repr(v, name) for v in value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, dict):
        items = sorted(f"{stable_repr(k, name)}={stable_repr(v, name)}" for k, v in value.items())
        return "dict(" + ",".join(items) + ")"
    text = repr(value)
    if _ADDRESS.search(text):
        raise UnstableKeyError(
            f"argument {name!r} ({type(value).__qualname__}) has no stable key: its repr "
            f"{text!r} holds a memory address; give it a __repr__ of its value or pass key= "
            "to memoize"
        )
    return f"{type(value).__module__}.{type(value).__qualname__}:{text}"


def _finish(namespace: str, part: str) -> str:
    if len(part) > _MAX_PLAIN or not _SAFE.match(part):
        part = "#" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return f"{namespace}:{part}"


class _Base:
    """What :class:`Memoized` and :class:`MemoizedMany` share."""

    def __init__(
        self,
        cache: t.Any,
        func: t.Callable[..., t.Any],
        ttl: t.Any,
        tags: tuple[str, ...],
        key: t.Callable[..., str] | None,
        instance: t.Any = _UNSET,
    ) -> None:
        self.cache = cache
        self.__wrapped__ = func
        self.ttl = ttl
        self.tags = tags
        self.key = key
        self.instance = instance
        self.namespace = f"{func.__module__}.{func.__qualname__}"
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters)
        self.skip_first = bool(params) and params[0] in ("self", "cls")
        functools.update_wrapper(t.cast(t.Any, self), func)

    def _full(self, args: tuple[t.Any, ...]) -> tuple[t.Any, ...]:
        if self.instance is not _UNSET:
            return (self.instance, *args)
        return args

    def _key_of(self, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]) -> str:
        if self.key is not None:
            part = self.key(*args, **kwargs)
            if not isinstance(part, str):
                raise ConfigurationError(
                    f"the key= function of {self.namespace} must return a str, not {part!r}"
                )
            return _finish(self.namespace, part)
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.namespace}(): {exc}") from None
        bound.apply_defaults()
        items = list(bound.arguments.items())
        if self.skip_first:
            items = items[1:]
        return _finish(self.namespace, ",".join(f"{n}={stable_repr(v, n)}" for n, v in items))


class Memoized(_Base, t.Generic[F]):
    """A memoized function; a descriptor, so it memoizes methods too.

    Call it like the function. ``invalidate``, ``refresh`` and ``cache_key`` take the same
    arguments (without ``self``/``cls`` when reached through an instance or class).
    """

    def __init__(
        self,
        cache: t.Any,
        func: t.Callable[..., t.Any],
        *,
        ttl: t.Any,
        stale_ttl: float | None,
        tags: tuple[str, ...],
        key: t.Callable[..., str] | None,
        unless: t.Callable[..., bool] | None,
        options: dict[str, t.Any],
        instance: t.Any = _UNSET,
    ) -> None:
        super().__init__(cache, func, ttl, tags, key, instance)
        self.stale_ttl = stale_ttl
        self.unless = unless
        self.options = options

    def __get__(self, instance: t.Any, owner: type | None = None) -> Memoized[F]:
        if instance is None:
            return self
        return Memoized(
            self.cache,
            self.__wrapped__,
            ttl=self.ttl,
            stale_ttl=self.stale_ttl,
            tags=self.tags,
            key=self.key,
            unless=self.unless,
            options=self.options,
            instance=instance,
        )

    def __call__(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        full = self._full(args)
        func = self.__wrapped__
        if self.unless is not None and self.unless(*full, **kwargs):
            return resolve(func(*full, **kwargs), self.ttl, self.tags)[0]
        return self.cache.get_or_set(
            self._key_of(full, kwargs),
            lambda: func(*full, **kwargs),
            self.ttl,
            stale_ttl=self.stale_ttl,
            tags=self.tags,
            **self.options,
        )

    def cache_key(self, *args: t.Any, **kwargs: t.Any) -> str:
        """The key the call with these arguments uses."""
        return self._key_of(self._with_placeholder(args), kwargs)

    def invalidate(self, *args: t.Any, **kwargs: t.Any) -> bool:
        """Delete the cached result of the call with these arguments; True if one was held."""
        return bool(self.cache.delete(self.cache_key(*args, **kwargs)))

    def refresh(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """Call the function now, store its result (ordered like any write), return it."""
        full = self._with_placeholder(args)
        if self.instance is not _UNSET or not self.skip_first:
            call_args = full
        else:
            raise ConfigurationError(
                f"refresh {self.namespace} through an instance or class, which it needs"
            )
        key = self._key_of(full, kwargs)
        result = self.__wrapped__(*call_args, **kwargs)
        value, ttl, tags, store = resolve(result, self.ttl, self.tags)
        if store:
            self.cache.set(key, value, ttl, tags=tags)
        return value

    def _with_placeholder(self, args: tuple[t.Any, ...]) -> tuple[t.Any, ...]:
        if self.instance is not _UNSET:
            return (self.instance, *args)
        if self.skip_first:
            return (None, *args)  # left out of the key anyway
        return args


class MemoizedMany(_Base, t.Generic[F]):
    """A memoized batch function: ``f(*items)`` returns one result per item, in order.

    Each item is cached under its own key; a call looks all of them up at once and calls
    the function only with the missing ones (like dogpile's ``cache_multi_on_arguments``).
    """

    def __call__(self, *items: t.Any) -> list[t.Any]:
        keys = [self._item_key(item) for item in items]
        found = self.cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            loaded = list(self.__wrapped__(*[items[i] for i in missing]))
            if len(loaded) != len(missing):
                raise ConfigurationError(
                    f"{self.namespace} returned {len(loaded)} results for {len(missing)} items"
                )
            store: dict[str, t.Any] = {}
            for i, result in zip(missing, loaded):
                value, ttl, tags, keep = resolve(result, self.ttl, self.tags)
                found[keys[i]] = value
                if not keep:
                    continue
                if ttl is self.ttl and tags == self.tags:
                    store[keys[i]] = value
                else:
                    self.cache.set(keys[i], value, ttl, tags=tags)
            if store:
                self.cache.set_many(store, self.ttl, tags=self.tags)
        return [found[k] for k in keys]

    def _item_key(self, item: t.Any) -> str:
        if self.key is not None:
            return self._key_of((item,), {})
        return _finish(self.namespace, stable_repr(item, "item"))

    def cache_key(self, item: t.Any) -> str:
        """The key of one item."""
        return self._item_key(item)

    def invalidate(self, *items: t.Any) -> int:
        """Delete the cached results of ``items``; how many were held."""
        return int(self.cache.delete_many([self._item_key(i) for i in items]))

    def refresh(self, *items: t.Any) -> list[t.Any]:
        """Call the function for ``items`` now and store the results."""
        self.invalidate(*items)
        return self(*items)


def memoizer(
    cache: t.Any,
    *,
    ttl: t.Any = DEFAULT,
    stale_ttl: float | None = None,
    tags: t.Any = (),
    key: t.Callable[..., str] | None = None,
    unless: t.Callable[..., bool] | None = None,
    soft_timeout: float | None = None,
    hard_timeout: float | None = None,
    refresh_ahead: float | None = None,
) -> t.Callable[[F], Memoized[F]]:
    """The decorator behind :meth:`TieredCache.memoize <tieredcache.TieredCache.memoize>`."""
    chosen = check_tags(tags) if tags else ()
    options = {
        "soft_timeout": soft_timeout,
        "hard_timeout": hard_timeout,
        "refresh_ahead": refresh_ahead,
    }

    def decorate(func: F) -> Memoized[F]:
        if isinstance(func, classmethod):
            raise ConfigurationError("put @classmethod above @memoize, not below it")
        if not callable(func):
            raise ConfigurationError(f"memoize decorates functions, not {func!r}")
        return Memoized(
            cache,
            func,
            ttl=ttl,
            stale_ttl=stale_ttl,
            tags=chosen,
            key=key,
            unless=unless,
            options=options,
        )

    return decorate


def many_memoizer(
    cache: t.Any,
    *,
    ttl: t.Any = DEFAULT,
    tags: t.Any = (),
    key: t.Callable[..., str] | None = None,
) -> t.Callable[[F], MemoizedMany[F]]:
    """The decorator behind
    :meth:`TieredCache.memoize_many <tieredcache.TieredCache.memoize_many>`."""
    chosen = check_tags(tags) if tags else ()

    def decorate(func: F) -> MemoizedMany[F]:
        return MemoizedMany(cache, func, ttl, chosen, key)

    return decorate
