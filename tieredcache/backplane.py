"""
Backplane
=========

A backplane keeps the in-process L1 of many processes coherent: after a process writes,
deletes, touches or clears keys, it publishes one small notification, and every *other*
process evicts those keys from its L1 (it re-reads them from the shared L2 on the next
access). A ``"set"`` written through an L2 that reports what each write replaced (the
Redis backend's ``SET ... GET``) may carry the new entries with the versions they replaced:
a process holding exactly the replaced entry replaces its copy instead of evicting it, in
any order of delivery (:mod:`tieredcache.tiered.coherence`). Every other message carries
keys only.

:class:`Backplane` is the protocol a composition talks to, and this module defines the
messages every implementation sends; :class:`~tieredcache.redis.backplane.RedisBackplane`
implements it with Redis pub/sub (importable from here too, for compatibility).

Messages
--------

One ``PUBLISH`` per message on one channel (``"tieredcache:invalidate"`` by default). A
composition holds what it has to announce for at most the backplane's ``linger`` (5 ms for
a :class:`~tieredcache.redis.backplane.RedisBackplane`) and sends it together: one message
per kind, the keys of every write of that time. The payload is compact ASCII JSON::

    {"o":"5f0c9a1e6b2d4c73","k":"delete","v":1718000000000000000,"keys":["a","b"]}

``o`` is the publisher's origin id (random, per backplane instance, new after a fork), ``k``
the kind (``"set"``, ``"delete"``, ``"touch"`` or ``"clear"``; ``keys`` is empty for
``"clear"``), ``v`` the write version and ``keys`` the cache's own keys (before any backend
prefix). A ``"set"`` may add ``"e"``: ``{key: base64 of the encoded entry}`` (each at
most :data:`MAX_INLINE_ENTRY` bytes, signed like L2 payloads when the serializer signs) and
``"p"``: ``{key: the version of the entry the write replaced in L2}`` (a key missing from
``"p"``: unknown). Receivers that do not know the fields ignore them and evict, and entries
without ``"p"`` only evict. Unknown fields are ignored. A
well-formed message of an unknown kind is delivered conservatively: as
``"delete"`` of its keys, or as ``"clear"`` when it has none. A malformed message is
counted, logged and ignored.

Staleness bound
---------------

After a write in process A (L2 first, then the publish), process B's L1 stops serving the
old value as soon as B's subscriber thread has received the message and run the callback.
A composition sends its announcements at most ``linger`` after the write (5 ms by default;
``linger=0`` sends each at once), which adds to the figures below.
For a :class:`~tieredcache.redis.backplane.RedisBackplane`, measured on loopback (Redis 7.0,
redis-py 8.1, CPython 3.11, 2 vCPUs) from the call to ``publish()`` to the return of
``on_invalidate`` in another process: **p50 ≈ 0.2 ms, p99 ≈ 0.5 ms** (300 messages, two
subscriber processes); between two backplanes of one process, p50 ≈ 0.08 ms, p99 ≈ 0.3 ms
(500 messages). From the start of a ``TieredCache.set`` (L2 write, then publish) to the
eviction in the other processes: under 3 ms with ``linger=0``, plus the linger otherwise.
``tests/test_backplane.py`` measures these figures on every run and prints them (``pytest -rP``).

The eviction must also stop refills already in flight: a read in B that fetched the old
value from L2 just before A's write would otherwise put it back into L1 after the eviction.
A composition therefore evicts through its per-key write ordering (an L1-only write of the
keys, and an L1 reset epoch for ``clear`` and ``on_reset``), so such refills are skipped.

When the subscription breaks (connection lost, server restarted, no ``PONG`` to a health
check within ``health_interval``), messages published meanwhile are lost, so the subscriber
calls ``on_reset()`` at once: the composition flushes its L1, and from then on serves only
values re-read from L2. It calls ``on_reset()`` again once it has resubscribed (the L1 may
have been refilled from L2 during the gap), and also after the very first subscription
(closing the window between creating the cache and the subscription taking effect). While
disconnected, L1 entries refilled during the gap are bounded only by the L1 TTL: a
composition may check :attr:`Backplane.connected` and skip refills meanwhile.

See :mod:`tieredcache.redis.backplane` for the threads, forks and exit of the Redis
implementation.
"""

from __future__ import annotations

import base64
import json
import secrets
import typing as t

from tieredcache.errors import ConfigurationError

if t.TYPE_CHECKING:
    from tieredcache.redis.backplane import RedisBackplane

__all__ = [
    "DEFAULT_CHANNEL",
    "KINDS",
    "MAX_INLINE_ENTRY",
    "Backplane",
    "InvalidateCallback",
    "Message",
    "MessageCallback",
    "RedisBackplane",
    "ResetCallback",
    "check_kind",
    "decode_message",
    "encode_message",
    "message_keys",
    "message_prefix",
    "new_origin",
]

DEFAULT_CHANNEL = "tieredcache:invalidate"
"""The pub/sub channel used unless another is given."""

KINDS = ("set", "delete", "touch", "clear")
"""The kinds of operation a message announces."""

InvalidateCallback = t.Callable[[str, list[str]], None]
"""``on_invalidate(kind, keys)``: another process changed ``keys`` (all keys for ``clear``)."""

ResetCallback = t.Callable[[], None]
"""``on_reset()``: messages may have been missed; flush (or cap) the whole L1."""

MAX_INLINE_ENTRY = 1024
"""The largest encoded entry (bytes) a ``"set"`` message carries; larger ones are evicted."""


class Message(t.NamedTuple):
    """A decoded message, as an ``on_message`` callback receives it."""

    own: bool  # published by this backplane (never delivered: always False)
    kind: str  # a kind of KINDS (an unknown one is already mapped to delete or clear)
    keys: list[str]
    version: int
    entries: dict[str, bytes]  # the encoded new entries a "set" carries (may be empty)
    #: Per carried key, the version of the entry its write replaced in L2 (a key missing:
    #: unknown); ``None`` when the message does not say (its entries then only evict).
    previous: dict[str, int] | None = None


MessageCallback = t.Callable[[Message], None]
"""``on_message(message)``: every well-formed message of another origin."""

_B = t.TypeVar("_B", bound="Backplane")


class Backplane:
    """Cross-process L1 invalidation: the protocol a composition uses.

    A composition calls :meth:`publish` after each write that changes what other
    processes' L1 may hold, and :meth:`subscribe` once, with two callbacks:

    - ``on_invalidate(kind, keys)`` when *another* process (another origin) published:
      evict ``keys`` from L1, or all of L1 when ``kind == "clear"``;
    - ``on_reset()`` when messages may have been missed (the subscription was interrupted,
      or has just begun): flush (or cap) the whole L1.

    Callbacks run on the backplane's own thread: keep them short and never call
    :meth:`close` from one. An exception from ``on_invalidate`` is logged and counted, and
    ``on_reset()`` follows, so no stale entry survives a failing callback.

    :meth:`publish` never raises because of the transport: a failure is counted, logged
    (rate-limited) and reported by returning False, so that the caller (a composition's L2
    gate) can send the keys again later. Messages a backplane published itself are ignored
    by its subscriber.

    Implementations are thread-safe and usable as context managers (:meth:`close` on exit).
    """

    #: :meth:`publish` sends ``entries`` and ``previous`` (a backplane that does not
    #: ignores them, and its receivers evict).
    carries_entries: bool = False
    #: Seconds a composition may hold an announcement to send it with later ones in one
    #: message (see :class:`~tieredcache.tiered.announce.Announcements`).
    linger: float = 0.0

    def publish(
        self,
        kind: str,
        keys: t.Sequence[str],
        version: int = 0,
        *,
        entries: t.Mapping[str, bytes] | None = None,
        previous: t.Mapping[str, int | None] | None = None,
    ) -> bool:
        """Announce that this process changed ``keys``; never raises on transport errors.

        :returns: True if the message was sent, False if it failed or was dropped.

        :param kind: ``"set"``, ``"delete"``, ``"touch"`` or ``"clear"``.
        :param keys: the cache's keys (ignored for ``"clear"``).
        :param version: the write version (:func:`~tieredcache.entry.next_version`).
        :param entries: for a ``"set"``, the encoded new entries of some of ``keys``.
        :param previous: for each key of ``entries``, the version of the entry its write
            replaced in L2 (``None``: unknown); receivers holding exactly that entry
            replace it, the others evict.
        :raises ConfigurationError: ``kind`` is unknown or ``keys`` is a single str.
        """
        raise NotImplementedError

    def subscribe(
        self,
        on_invalidate: InvalidateCallback,
        on_reset: ResetCallback,
        *,
        on_message: MessageCallback | None = None,
    ) -> None:
        """Start delivering other processes' messages to ``on_invalidate``.

        With ``on_message``, every well-formed message of another origin goes to it
        instead, as a :class:`Message` carrying the version, and the entries and replaced
        versions a ``"set"`` carries.

        Returns at once; the subscription becomes active in the background (see
        :meth:`wait_connected`).

        :raises ConfigurationError: already subscribed, closed, or a callback is not callable.
        """
        raise NotImplementedError

    @property
    def origin(self) -> str:
        """The id this backplane's messages carry (random; new after a fork)."""
        raise NotImplementedError

    def bind(self, l2: t.Any) -> None:
        """Learn the L2 of the composition that subscribes (called before :meth:`subscribe`).

        A :class:`~tieredcache.redis.backplane.RedisBackplane` with ``tracking=True`` and no
        ``tracking_prefixes`` tracks the L2 backend's key prefix. The default does nothing.
        """

    @property
    def connected(self) -> bool:
        """True while the subscription is active."""
        return False

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the subscription is active; True if it is."""
        return self.connected

    def stats(self) -> dict[str, t.Any]:
        """Counters and state (see :meth:`RedisBackplane.stats
        <tieredcache.redis.backplane.RedisBackplane.stats>`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the subscriber (joined, bounded) and release connections. Idempotent."""

    def __enter__(self: _B) -> _B:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- messages ---------------------------------------------------------------------------------


def check_kind(kind: str) -> None:
    """Refuse a kind that is not one of :data:`KINDS`.

    :raises ConfigurationError: ``kind`` is unknown.
    """
    if kind not in KINDS:
        raise ConfigurationError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")


def message_keys(kind: str, keys: t.Sequence[str]) -> list[str]:
    """The keys a message of ``kind`` names (none for ``"clear"``).

    :raises ConfigurationError: ``kind`` is unknown or ``keys`` is a single str.
    """
    check_kind(kind)
    if isinstance(keys, (str, bytes)):
        raise ConfigurationError("keys must be a sequence of str, not a single str")
    return [] if kind == "clear" else list(keys)


def new_origin() -> str:
    """A random origin id for a backplane (16 hex digits)."""
    return secrets.token_hex(8)


def encode_message(
    origin: str,
    kind: str,
    version: int,
    keys: t.Iterable[str],
    entries: t.Mapping[str, bytes] | None = None,
    previous: t.Mapping[str, int | None] | None = None,
) -> bytes:
    """The payload of one message (compact ASCII JSON; ``entries`` base64-encoded). A
    ``"set"`` carries those of ``entries`` of at most :data:`MAX_INLINE_ENTRY` bytes with
    their ``previous`` versions; other kinds carry keys only."""
    message: dict[str, t.Any] = {"o": origin, "k": kind, "v": int(version), "keys": list(keys)}
    if kind == "set" and entries:
        carried = {k: v for k, v in entries.items() if len(v) <= MAX_INLINE_ENTRY}
        if carried:
            before = previous or {}
            message["e"] = {k: base64.b64encode(v).decode("ascii") for k, v in carried.items()}
            message["p"] = {k: before[k] for k in carried if before.get(k) is not None}
    return json.dumps(message, separators=(",", ":")).encode("ascii")


def message_prefix(origin: str) -> bytes:
    """How every message of ``origin`` begins (:func:`encode_message` writes the origin
    first), so that a subscriber can skip its own without decoding them."""
    return b'{"o":' + json.dumps(origin).encode("ascii") + b","


def decode_message(
    data: t.Any,
) -> tuple[str, str, list[str], int, dict[str, bytes], dict[str, int] | None]:
    """``(origin, kind, keys, version, entries, previous)``; unknown fields are ignored, and
    entries that are not well-formed are dropped (their keys are then evicted, not
    updated). ``previous`` is ``None`` when the message has no ``"p"``.

    :raises ValueError: the message is malformed.
    """
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("ascii")
    if not isinstance(data, str):
        raise ValueError(f"expected bytes, got {type(data).__name__}")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    origin, kind, keys = message.get("o"), message.get("k"), message.get("keys", [])
    if not isinstance(origin, str) or not isinstance(kind, str):
        raise ValueError("origin and kind must be strings")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys must be a list of strings")
    if kind not in KINDS:
        kind = "delete" if keys else "clear"
    if kind == "clear":
        keys = []
    version = message.get("v", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        version = 0
    entries: dict[str, bytes] = {}
    carried = message.get("e")
    if kind == "set" and isinstance(carried, dict):
        wanted = set(keys)
        for key, text in carried.items():
            if key in wanted and isinstance(text, str):
                try:
                    entries[key] = base64.b64decode(text, validate=True)
                except ValueError:
                    continue
    previous: dict[str, int] | None = None
    stated = message.get("p")
    if kind == "set" and isinstance(stated, dict):
        previous = {
            key: number
            for key, number in stated.items()
            if key in entries and isinstance(number, int) and not isinstance(number, bool)
        }
    return origin, kind, keys, version, entries, previous


def __getattr__(name: str) -> t.Any:
    # RedisBackplane lives in tieredcache.redis.backplane (which imports this module); it is
    # still importable from here, loaded on first access (PEP 562).
    if name == "RedisBackplane":
        from tieredcache.redis import backplane

        return backplane.RedisBackplane
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
