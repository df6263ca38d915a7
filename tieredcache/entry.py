"""Entries, time and versions.

Every stored value travels as an :class:`Entry`: the value, its absolute expiry in epoch
seconds (``None`` means never), a per-key write ``version`` (wall-clock nanoseconds, so
also the write time), for stale-while-revalidate ``stale_at``, and the ``tags`` it was
written with. "No expiry" (``expires_at=None``) and "expired" (``expires_at <= now``) are never
the same value.
"""

from __future__ import annotations

import math
import threading
import time
import typing as t

from tieredcache import lifecycle
from tieredcache.errors import ConfigurationError

__all__ = [
    "DEFAULT",
    "MAX_TTL",
    "Entry",
    "Timer",
    "expires_at_for",
    "next_version",
    "validate_ttl",
]

MAX_TTL = 100 * 365.25 * 86400.0
"""The longest TTL accepted, in seconds: 100 years. Every store takes an expiry this far
ahead (Redis counts it in milliseconds in a signed 64-bit integer; memcached caps its own
expiry in 2038 and the envelope keeps the exact one); use ``None`` for no expiry."""

Timer = t.Callable[[], float]
"""A clock: a callable returning the current time in epoch seconds (``time.time``)."""


class _Default:
    """The type of :data:`DEFAULT`."""

    _instance: t.ClassVar[_Default | None] = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self) -> str:
        return "DEFAULT"


DEFAULT: t.Any = _Default()
"""Sentinel for "use the cache's default TTL" (distinct from ``None``, which means forever)."""


class Entry:
    """A cached value with its absolute expiry, write version and optional stale time.

    Entries are immutable by convention and safe to share between threads.

    :param value: the cached value (any object; ``None`` is a valid value).
    :param expires_at: epoch seconds after which the entry is expired; ``None`` = never.
    :param version: the write version; later writes of a key carry larger versions.
    :param stale_at: epoch seconds after which the entry is stale but still servable.
    :param tags: the tags the entry was written with (see :mod:`tieredcache.tiered.tags`).
    """

    __slots__ = ("expires_at", "stale_at", "tags", "value", "version", "wire")

    def __init__(
        self,
        value: t.Any,
        expires_at: float | None = None,
        version: int = 0,
        stale_at: float | None = None,
        tags: tuple[str, ...] = (),
    ) -> None:
        self.value = value
        self.expires_at = expires_at
        self.version = version
        self.stale_at = stale_at
        self.tags = tags
        #: ``(codec, envelope)``: this entry as a codec encoded it, kept so that a write
        #: encodes once (the serializability check's bytes are the ones L2 receives).
        self.wire: tuple[t.Any, bytes] | None = None

    def expired(self, now: float) -> bool:
        """True if the entry has expired at ``now``."""
        return self.expires_at is not None and self.expires_at <= now

    def stale(self, now: float) -> bool:
        """True if the entry is past its ``stale_at`` (an expired entry is also stale)."""
        return (self.stale_at is not None and self.stale_at <= now) or self.expired(now)

    def remaining(self, now: float) -> float | None:
        """Seconds left before expiry (``None`` = never expires; ``0.0`` = expired)."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - now)

    def replace(self, **changes: t.Any) -> Entry:
        """A copy with the given attributes changed."""
        fields = {
            "value": self.value,
            "expires_at": self.expires_at,
            "version": self.version,
            "stale_at": self.stale_at,
            "tags": self.tags,
        }
        fields.update(changes)
        return Entry(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return (
            self.value == other.value
            and self.expires_at == other.expires_at
            and self.version == other.version
            and self.stale_at == other.stale_at
            and self.tags == other.tags
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        tags = f", tags={self.tags!r}" if self.tags else ""
        return (
            f"Entry(value={self.value!r}, expires_at={self.expires_at!r}, "
            f"version={self.version!r}, stale_at={self.stale_at!r}{tags})"
        )

    def __reduce__(self) -> t.Any:
        return (Entry, (self.value, self.expires_at, self.version, self.stale_at, self.tags))


def validate_ttl(ttl: t.Any, *, name: str = "ttl") -> float | None:
    """Check a TTL in seconds and return it as a float (``None`` stays ``None``).

    :raises ConfigurationError: the TTL is not ``None``, an int or a float, is NaN or
        infinite, or is longer than :data:`MAX_TTL` (100 years).
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise ConfigurationError(f"{name} must be a number of seconds or None, not {ttl!r}")
    try:
        seconds = float(ttl)
    except OverflowError:  # an int beyond any float
        seconds = math.inf if ttl > 0 else -math.inf
        shown = f"an int of {int(ttl).bit_length()} bits"
    else:
        shown = repr(ttl)
    if seconds > MAX_TTL:
        raise ConfigurationError(
            f"{name} must be at most {MAX_TTL:.0f} seconds (100 years; use None for no "
            f"expiry), not {shown}"
        )
    if not math.isfinite(seconds):
        raise ConfigurationError(f"{name} must be finite (use None for no expiry), not {shown}")
    return seconds


def expires_at_for(ttl: float | None, now: float) -> float | None:
    """The absolute expiry of a TTL that starts at ``now`` (``None`` = never).

    A TTL of zero or less has no expiry time: callers must not store such an entry.
    """
    if ttl is None:
        return None
    return now + ttl


_version_lock = threading.Lock()
_last_version = 0


def _new_version_lock() -> None:
    # In a forked child a thread that held it does not exist: start with a free one.
    global _version_lock
    _version_lock = threading.Lock()


lifecycle.on_fork(_new_version_lock)


def next_version() -> int:
    """A new write version: nanoseconds since the epoch, strictly increasing in a process.

    Versions from different processes are comparable as wall-clock times, which makes the
    last-writer-wins rule between processes follow real time as closely as the clocks agree.
    """
    global _last_version
    now = time.time_ns()
    with _version_lock:
        _last_version = now if now > _last_version else _last_version + 1
        return _last_version
