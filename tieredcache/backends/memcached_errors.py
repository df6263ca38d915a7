"""Memcached errors: how ``pymemcache``'s failures become :mod:`tieredcache.errors`, which
server of a hashed client failed, and which failures are a connection the server dropped."""

from __future__ import annotations

import socket
import typing as t

from pymemcache.exceptions import MemcacheClientError
from pymemcache.exceptions import MemcacheError
from pymemcache.exceptions import MemcacheServerError
from pymemcache.exceptions import MemcacheUnexpectedCloseError
from pymemcache.exceptions import MemcacheUnknownError

from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import ValueTooLargeError

__all__ = [
    "DRIVER_ERRORS",
    "DROPPED",
    "POOL_EXHAUSTED",
    "describe",
    "failed_server",
    "is_too_large",
    "tag_server",
    "translate",
]

#: The driver's errors, which :func:`translate` turns into tieredcache's.
DRIVER_ERRORS = (MemcacheError, socket.timeout, OSError)
#: The errors of a connection the server dropped while it sat idle in the pool (a restart).
DROPPED = (MemcacheUnexpectedCloseError, ConnectionResetError, BrokenPipeError)
#: The message of pymemcache's pool when ``max_pool_size`` connections are all in use.
POOL_EXHAUSTED = "Too many objects"
#: The attribute that names, on a driver error, the server of a hashed client that raised it.
_FAILED_SERVER = "_tieredcache_server"


def translate(exc: BaseException, where: str, backend: str) -> BackendError:
    """The tieredcache error for the driver error ``exc`` of the server(s) ``where``."""
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return BackendTimeoutError(
            f"no answer from {where} within the timeout: {describe(exc)}", backend=backend
        )
    if isinstance(exc, MemcacheUnexpectedCloseError):
        return BackendUnavailableError(
            f"{where} closed the connection unexpectedly", backend=backend
        )
    if isinstance(exc, OSError):
        return BackendUnavailableError(f"cannot reach {where}: {describe(exc)}", backend=backend)
    if isinstance(exc, MemcacheServerError):
        if is_too_large(exc):
            return ValueTooLargeError(
                f"{where} refused a value as too large: {describe(exc)}", backend=backend
            )
        return BackendResponseError(f"server error: {describe(exc)}", backend=backend)
    if isinstance(exc, MemcacheClientError):
        return BackendResponseError(f"client error: {describe(exc)}", backend=backend)
    if isinstance(exc, MemcacheUnknownError):
        # A reply that is not memcached's protocol: the connection (or the server at that
        # address) cannot be used, whatever the key.
        return BackendUnavailableError(
            f"{where} answered outside the memcached protocol: {describe(exc)}", backend=backend
        )
    return BackendError(describe(exc), backend=backend)


def is_too_large(exc: BaseException) -> bool:
    """True if the server refused a value as larger than its item size."""
    return "too large" in str(exc)


def tag_server(exc: BaseException, server: t.Any) -> None:
    """Record on ``exc`` the server of a hashed client that raised it."""
    try:
        setattr(exc, _FAILED_SERVER, server)
    except (AttributeError, TypeError):  # pragma: no cover - an exception with __slots__
        pass


def failed_server(exc: BaseException) -> t.Any:
    """The server :func:`tag_server` recorded on ``exc``, or ``None``."""
    return getattr(exc, _FAILED_SERVER, None)


def describe(exc: BaseException) -> str:
    """``Type: message``, with the server's bytes shown as text."""
    text = str(exc)
    if isinstance(exc, MemcacheError) and text.startswith("b'"):
        text = text[2:-1]  # pymemcache passes the server's bytes to the exception
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
