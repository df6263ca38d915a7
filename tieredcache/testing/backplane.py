"""An in-process backplane for tests: messages wait in inboxes until :meth:`deliver`.

Several compositions in one test process stand for several processes sharing an L2; a
:class:`LocalBackplaneHub` connects their :class:`LocalBackplane` instances. Nothing is
delivered until the test calls :meth:`LocalBackplaneHub.deliver`, so a state machine can
explore every order of writes, announcements and deliveries. :meth:`LocalBackplaneHub.fail`
makes every publish fail (as a frozen Redis would), :meth:`LocalBackplaneHub.recover` ends it.
"""

from __future__ import annotations

import threading
import typing as t

from tieredcache.backplane import Backplane
from tieredcache.backplane import InvalidateCallback
from tieredcache.backplane import Message
from tieredcache.backplane import MessageCallback
from tieredcache.backplane import ResetCallback
from tieredcache.backplane import decode_message
from tieredcache.backplane import encode_message
from tieredcache.backplane import message_keys
from tieredcache.errors import ConfigurationError

__all__ = ["LocalBackplane", "LocalBackplaneHub"]


class LocalBackplaneHub:
    """Connects :class:`LocalBackplane` instances. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: list[LocalBackplane] = []
        self.failing = False

    def new(self) -> LocalBackplane:
        """A backplane for one more composition ("process")."""
        member = LocalBackplane(self, f"p{len(self._members)}")
        with self._lock:
            self._members.append(member)
        return member

    def fail(self) -> None:
        self.failing = True

    def recover(self) -> None:
        self.failing = False

    def _publish(self, sender: LocalBackplane, message: bytes) -> bool:
        with self._lock:
            if self.failing:
                return False
            for member in self._members:
                if member is not sender:
                    member.inbox.append(message)
        return True

    def deliver(self) -> int:
        """Deliver every waiting message, in publication order per receiver; how many."""
        delivered = 0
        with self._lock:
            members = list(self._members)
        for member in members:
            delivered += member.deliver()
        return delivered


class LocalBackplane(Backplane):
    """One composition's end of a :class:`LocalBackplaneHub`. Messages travel encoded, as
    :class:`~tieredcache.redis.backplane.RedisBackplane` sends them, entries included."""

    carries_entries = True

    def __init__(self, hub: LocalBackplaneHub, origin: str) -> None:
        self._hub = hub
        self._origin = origin
        self.inbox: list[bytes] = []
        self._on_invalidate: InvalidateCallback | None = None
        self._on_reset: ResetCallback | None = None
        self._on_message: MessageCallback | None = None
        self.published = 0
        self.received = 0

    def publish(
        self,
        kind: str,
        keys: t.Sequence[str],
        version: int = 0,
        *,
        entries: t.Mapping[str, bytes] | None = None,
        previous: t.Mapping[str, int | None] | None = None,
    ) -> bool:
        batch = message_keys(kind, keys)
        message = encode_message(self._origin, kind, version, batch, entries, previous)
        sent = self._hub._publish(self, message)
        if sent:
            self.published += 1
        return sent

    def subscribe(
        self,
        on_invalidate: InvalidateCallback,
        on_reset: ResetCallback,
        *,
        on_message: MessageCallback | None = None,
    ) -> None:
        """Subscribe (``on_message``, when given, receives every message instead)."""
        if self._on_invalidate is not None:
            raise ConfigurationError("this backplane already has a subscriber")
        self._on_invalidate = on_invalidate
        self._on_reset = on_reset
        self._on_message = on_message

    def deliver(self) -> int:
        """Deliver this member's waiting messages."""
        messages, self.inbox = self.inbox, []
        for data in messages:
            self.received += 1
            _, kind, keys, version, entries, previous = decode_message(data)
            if self._on_message is not None:
                self._on_message(Message(False, kind, keys, version, entries, previous))
            elif self._on_invalidate is not None:
                self._on_invalidate(kind, keys)
        return len(messages)

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def connected(self) -> bool:
        return True

    def stats(self) -> dict[str, t.Any]:
        return {"published": self.published, "received": self.received}

    def close(self) -> None:
        self.inbox = []
