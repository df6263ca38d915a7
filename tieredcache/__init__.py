"""tieredcache: a pure-sync, threaded, multi-level cache.

Every public name is importable from here. Backends that need a driver (Redis, memcached)
and the compositions load on first use, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
import typing as t

from tieredcache.backends.base import Backend
from tieredcache.backends.memory import MemoryBackend
from tieredcache.backends.null import NullBackend
from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import BothLayersFailed
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DegradedTierWarning
from tieredcache.errors import DeserializationError
from tieredcache.errors import InvalidKeyError
from tieredcache.errors import LoaderTimeoutError
from tieredcache.errors import LockTimeoutError
from tieredcache.errors import OffloadError
from tieredcache.errors import SerializationError
from tieredcache.errors import TieredCacheError
from tieredcache.errors import TieredCacheWarning
from tieredcache.errors import UnstableKeyError
from tieredcache.errors import UnsupportedOperationError
from tieredcache.errors import ValueTooLargeError
from tieredcache.policies import LoserPolicy
from tieredcache.policies import OptimisticParallelWrite
from tieredcache.policies import ParallelRead
from tieredcache.policies import RaceRead
from tieredcache.policies import RaceWrite
from tieredcache.policies import ReadPolicy
from tieredcache.policies import Refill
from tieredcache.policies import SequentialRead
from tieredcache.policies import SequentialWrite
from tieredcache.policies import WritePolicy
from tieredcache.serializers import CompressedSerializer
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import JSONSerializer
from tieredcache.serializers import PickleSerializer
from tieredcache.serializers import Serializer
from tieredcache.serializers import SignedSerializer
from tieredcache.tiered import TieredCache
from tieredcache.tiered.loading import Loaded

__version__ = "0.1.0"

# name -> module that defines it; loaded on first access (PEP 562).
_LAZY = {
    "RedisBackend": "tieredcache.backends.redis",
    "MemcachedBackend": "tieredcache.backends.memcached",
    "SQLiteBackend": "tieredcache.backends.sqlite",
    "InlineOffload": "tieredcache.offload",
    "DisabledOffload": "tieredcache.offload",
    "Offload": "tieredcache.offload",
    "OffloadKey": "tieredcache.offload",
    "OffloadStats": "tieredcache.offload",
    "ThreadPoolOffload": "tieredcache.offload",
    "default_offload": "tieredcache.offload",
    "CircuitBreaker": "tieredcache.breaker",
    "CircuitOpenError": "tieredcache.breaker",
    "Backplane": "tieredcache.backplane",
    "RedisBackplane": "tieredcache.redis.backplane",
    "RedisLock": "tieredcache.redis.lock",
    "Memoized": "tieredcache.memoize",
    "MemoizedMany": "tieredcache.memoize",
    "set_default_offload": "tieredcache.offload",
}

__all__ = [
    "DEFAULT",
    "Backend",
    "BackendError",
    "BackendResponseError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BothLayersFailed",
    "CompressedSerializer",
    "ConfigurationError",
    "DegradedTierWarning",
    "DeserializationError",
    "Entry",
    "EntryCodec",
    "InvalidKeyError",
    "LoserPolicy",
    "OptimisticParallelWrite",
    "ParallelRead",
    "RaceRead",
    "RaceWrite",
    "ReadPolicy",
    "Refill",
    "SequentialRead",
    "SequentialWrite",
    "TieredCache",
    "WritePolicy",
    "JSONSerializer",
    "Loaded",
    "LoaderTimeoutError",
    "LockTimeoutError",
    "MemoryBackend",
    "NullBackend",
    "OffloadError",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "SignedSerializer",
    "TieredCacheError",
    "TieredCacheWarning",
    "UnstableKeyError",
    "UnsupportedOperationError",
    "ValueTooLargeError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> t.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tieredcache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
