"""Sending a backplane's messages: ``PUBLISH`` on the direct protocol path where the client
allows it (see :mod:`tieredcache.redis.direct`), through the client otherwise."""

from __future__ import annotations

import typing as t

from tieredcache.errors import ConfigurationError
from tieredcache.redis.direct import RETRY_THROUGH_CLIENT
from tieredcache.redis.direct import DirectCommands
from tieredcache.redis.direct import pack

__all__ = ["Publisher", "check_linger"]


def check_linger(linger: t.Any) -> float:
    """``linger`` as a float of seconds.

    :raises ConfigurationError: not a number of seconds in [0, 1].
    """
    if not isinstance(linger, (int, float)) or isinstance(linger, bool) or not 0 <= linger <= 1:
        raise ConfigurationError(f"linger must be a number of seconds in [0, 1], not {linger!r}")
    return float(linger)


class Publisher:
    """Publishes on one channel with ``client``. Thread-safe.

    :param client: a redis-py client (the caller keeps owning it).
    :param channel: the pub/sub channel.
    """

    def __init__(self, client: t.Any, channel: str) -> None:
        self._client = client
        self._channel = channel
        # Encoded as the client encodes it: the channel the subscribers subscribed to.
        self._channel_bytes = client.get_encoder().encode(channel)
        self._direct = DirectCommands.for_client(client)

    def send(self, message: bytes) -> None:
        """Publish ``message``.

        :raises Exception: the driver's error when the server could not be reached.
        """
        direct = self._direct
        if direct is not None:
            try:
                direct.call(pack(b"PUBLISH", self._channel_bytes, message))
                return
            except RETRY_THROUGH_CLIENT:
                pass
        self._client.publish(self._channel, message)

    def close(self) -> None:
        """Close the direct connections (the client stays open)."""
        if self._direct is not None:
            self._direct.close()
