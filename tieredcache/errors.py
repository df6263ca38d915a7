"""Exceptions and warnings raised by tieredcache.

The hierarchy::

    TieredCacheError
    ├── ConfigurationError(TieredCacheError, ValueError)   bad ttl, bad option
    │   └── UnstableKeyError                               a memoized argument has no stable key
    ├── InvalidKeyError(TieredCacheError, ValueError)      not a str, or refused by a store
    ├── BackendError                                       .tier, .backend; cause chained
    │   ├── BackendUnavailableError                        refused, DNS, pool exhausted
    │   │   └── BackendTimeoutError
    │   ├── BackendResponseError                           server refused (OOM, READONLY)
    │   │   └── ValueTooLargeError                         a value over the store's item limit
    │   └── BothLayersFailed                               .l1 and .l2 causes, in that order
    ├── SerializationError                                 value cannot be encoded; nothing written
    │   └── DeserializationError                           read path treats it as a miss
    ├── LockTimeoutError
    ├── LoaderTimeoutError(TieredCacheError, TimeoutError)  a loader's hard_timeout passed
    ├── OffloadError                                       register after close()
    └── UnsupportedOperationError(TieredCacheError, NotImplementedError)
                                                           the store cannot do this

    TieredCacheWarning(Warning)
    └── DegradedTierWarning                                a fail-open tier error, rate-limited

Errors that carry context define ``__reduce__`` so they survive pickling, since they cross
threads inside futures.
"""

from __future__ import annotations

import typing as t

__all__ = [
    "BackendError",
    "BackendResponseError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BothLayersFailed",
    "ConfigurationError",
    "DegradedTierWarning",
    "DeserializationError",
    "InvalidKeyError",
    "LoaderTimeoutError",
    "LockTimeoutError",
    "OffloadError",
    "SerializationError",
    "TieredCacheError",
    "TieredCacheWarning",
    "UnstableKeyError",
    "UnsupportedOperationError",
    "ValueTooLargeError",
]


class TieredCacheError(Exception):
    """Base class of every exception raised by tieredcache."""


class ConfigurationError(TieredCacheError, ValueError):
    """An option or argument is invalid, or an optional dependency is missing."""


class UnstableKeyError(ConfigurationError):
    """A memoized function's argument cannot give a key that is stable across processes."""


class InvalidKeyError(TieredCacheError, ValueError):
    """A key is not a string, or a store cannot accept it."""


class BackendError(TieredCacheError):
    """A storage layer failed.

    :param message: what went wrong.
    :param backend: a short name of the backend (``"redis"``, ``"memory"``, ...).
    :param tier: the position of the layer in a composition (``"l1"``, ``"l2"``), if known.
    """

    def __init__(self, message: str = "", *, backend: str | None = None, tier: str | None = None):
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.tier = tier

    def __reduce__(self) -> t.Any:
        return (_rebuild_backend_error, (type(self), self.message, self.backend, self.tier))

    def __str__(self) -> str:
        where = "/".join(p for p in (self.tier, self.backend) if p)
        return f"[{where}] {self.message}" if where else self.message


def _rebuild_backend_error(cls: type, message: str, backend: str | None, tier: str | None) -> t.Any:
    return cls(message, backend=backend, tier=tier)


class BackendUnavailableError(BackendError):
    """The store could not be reached: connection refused, DNS failure, pool exhausted."""


class BackendTimeoutError(BackendUnavailableError):
    """The store did not answer in time."""


class BackendResponseError(BackendError):
    """The store answered with an error (out of memory, read-only replica, value too large)."""


class ValueTooLargeError(BackendResponseError):
    """A value is larger than the store accepts; nothing was written to that store."""


class BothLayersFailed(BackendError):
    """Both layers of a composition failed; ``l1`` and ``l2`` hold the two causes."""

    def __init__(self, l1: BaseException, l2: BaseException, *, operation: str = "operation"):
        self.l1 = l1
        self.l2 = l2
        self.operation = operation
        super().__init__(
            f"Both cache layers failed to {operation}: l1: {l1!r}; l2: {l2!r}", backend="tiered"
        )

    def __reduce__(self) -> t.Any:
        return (_rebuild_both, (self.l1, self.l2, self.operation))

    @property
    def causes(self) -> tuple[BaseException, BaseException]:
        """The two causes, in the order (l1, l2)."""
        return (self.l1, self.l2)


def _rebuild_both(l1: BaseException, l2: BaseException, operation: str) -> BothLayersFailed:
    return BothLayersFailed(l1, l2, operation=operation)


class SerializationError(TieredCacheError):
    """A value could not be serialized; no layer was written."""


class DeserializationError(SerializationError):
    """A stored payload could not be verified or decoded; reads treat it as a miss."""


class LockTimeoutError(TieredCacheError):
    """A lock could not be acquired in time."""


class LoaderTimeoutError(TieredCacheError, TimeoutError):
    """A loader ran longer than its ``hard_timeout`` (it may still finish and store)."""


class OffloadError(TieredCacheError):
    """A background task could not be accepted (the offload is closed), or was cancelled
    before it ran (its executor was shut down)."""


class UnsupportedOperationError(TieredCacheError, NotImplementedError):
    """The store cannot do this operation (memcached cannot list its keys, say); the message
    names what to use instead."""


class TieredCacheWarning(Warning):
    """Base class of the warnings issued by tieredcache."""


class DegradedTierWarning(TieredCacheWarning):
    """A tier failed and the composition carried on without it."""
