"""The friendly API: values and TTLs in, values out.

:class:`FriendlyAPI` is the half of :class:`~tieredcache.backends.base.Backend` that users
call (:meth:`~FriendlyAPI.get`, :meth:`~FriendlyAPI.set`, :meth:`~FriendlyAPI.get_or_set`,
...). It is the outer boundary: it checks keys (:mod:`tieredcache.keys`) and TTLs once,
stamps each value as an :class:`~tieredcache.entry.Entry` (expiry and version), and hands
the entries to the entry-level contract that :class:`~tieredcache.backends.base.Backend`
defines and compositions call (``get_entry``, ``set_entry``, ``add_entry``, ...).
"""

from __future__ import annotations

import typing as t

from tieredcache.entry import DEFAULT
from tieredcache.entry import Entry
from tieredcache.entry import next_version
from tieredcache.entry import validate_ttl
from tieredcache.keys import check_key
from tieredcache.keys import check_keys

if t.TYPE_CHECKING:
    from tieredcache.locks import SingleFlight

__all__ = ["FriendlyAPI"]


class FriendlyAPI:
    """The friendly API over the entry-level contract (a mixin of
    :class:`~tieredcache.backends.base.Backend`, which supplies that contract)."""

    if t.TYPE_CHECKING:
        # The entry-level contract, defined by Backend.
        default_ttl: float | None
        _flights: SingleFlight

        def _now(self) -> float: ...
        def get_entry(self, key: str) -> Entry | None: ...
        def get_entries(self, keys: t.Iterable[str]) -> dict[str, Entry]: ...
        def set_entry(self, key: str, entry: Entry) -> None: ...
        def set_entries(self, items: t.Mapping[str, Entry]) -> None: ...
        def add_entry(self, key: str, entry: Entry) -> bool: ...
        def touch_entry(self, key: str, expires_at: float | None) -> bool: ...
        def delete(self, key: str) -> bool: ...
        def delete_many(self, keys: t.Iterable[str]) -> int: ...

    # -- validation and stamping --------------------------------------------------------

    def _resolve_ttl(self, ttl: t.Any) -> float | None:
        if ttl is DEFAULT:
            return self.default_ttl
        return validate_ttl(ttl)

    def _ttl_seconds(self, ttl: t.Any) -> float | None:
        """The lifetime a write gets for ``ttl`` (compositions add jitter here)."""
        return self._resolve_ttl(ttl)

    def _new_entry(self, value: t.Any, ttl: t.Any) -> Entry | None:
        """The entry for ``value`` under ``ttl``, or ``None`` when the TTL means "do not store"."""
        seconds = self._ttl_seconds(ttl)
        if seconds is None:
            return Entry(value, None, next_version())
        if seconds <= 0:
            return None
        return Entry(value, self._now() + seconds, next_version())

    # -- friendly API -------------------------------------------------------------------

    def get(self, key: str, default: t.Any = None) -> t.Any:
        """The value under ``key``, or ``default`` when it is missing or expired."""
        entry = self.get_entry(key)
        return default if entry is None else entry.value

    def set(self, key: str, value: t.Any, ttl: t.Any = DEFAULT) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds.

        ``ttl=None`` stores it forever; ``0`` or less stores nothing and deletes any value
        the key had; by default the backend's ``default_ttl`` applies.

        :raises SerializationError: the value cannot be serialized; nothing was written.
        :raises BackendError: the store failed.
        """
        check_key(key)
        entry = self._new_entry(value, ttl)
        if entry is None:
            self.delete(key)
        else:
            self.set_entry(key, entry)

    def add(self, key: str, value: t.Any, ttl: t.Any = DEFAULT) -> bool:
        """Store ``value`` only if ``key`` holds no value; True if it was stored."""
        check_key(key)
        entry = self._new_entry(value, ttl)
        if entry is None:
            return False
        return self.add_entry(key, entry)

    def has(self, key: str) -> bool:
        """True if ``key`` holds an unexpired value."""
        return self.get_entry(key) is not None

    def get_many(self, keys: t.Iterable[str]) -> dict[str, t.Any]:
        """The values of the ``keys`` that hold one, by key."""
        return {k: e.value for k, e in self.get_entries(keys).items()}

    def set_many(self, mapping: t.Mapping[str, t.Any], ttl: t.Any = DEFAULT) -> None:
        """Store every item for ``ttl`` seconds, in one batch where the store allows."""
        check_keys(mapping)
        seconds = self._ttl_seconds(ttl)
        if seconds is not None and seconds <= 0:
            self.delete_many(list(mapping))
            return
        expires_at = None if seconds is None else self._now() + seconds
        self.set_entries({k: Entry(v, expires_at, next_version()) for k, v in mapping.items()})

    def touch(self, key: str, ttl: t.Any = DEFAULT) -> bool:
        """Give ``key`` a new TTL; False if it holds no value. ``ttl <= 0`` deletes it."""
        seconds = self._resolve_ttl(ttl)
        expires_at = None if seconds is None else self._now() + seconds
        return self.touch_entry(key, expires_at)

    def get_or_set(
        self,
        key: str,
        loader: t.Callable[[], t.Any],
        ttl: t.Any = DEFAULT,
        *,
        wait_timeout: float | None = None,
    ) -> t.Any:
        """The value under ``key``; on a miss, ``loader()``'s result, stored and returned.

        Single-flight in the process: concurrent callers on a missing key run the loader
        once and all receive its result; if it raises, every waiting caller gets the same
        exception, and the next call tries again.

        :param wait_timeout: how long a caller waits for another's loader (``None``: as
            long as the loader takes).
        :raises LockTimeoutError: ``wait_timeout`` passed.
        """
        entry = self.get_entry(key)
        if entry is not None:
            return entry.value

        def load() -> t.Any:
            again = self.get_entry(key)  # a leader that finished just now already stored it
            if again is not None:
                return again.value
            value = loader()
            self.set(key, value, ttl)
            return value

        return self._flights.run(key, load, wait_timeout)
