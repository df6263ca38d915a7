"""A circuit breaker for a remote tier.

After ``failures`` consecutive failures the breaker *opens*: calls to the tier are refused
at once (:class:`CircuitOpenError`) instead of waiting for timeouts. After ``reset_after``
seconds it lets one call through (*half-open*); a success closes it, a failure opens it
again for another ``reset_after``. Every transition is logged and counted.

Only availability failures move a breaker: a refused or dropped connection, a timeout, a
cluster that cannot serve (:class:`~tieredcache.errors.BackendUnavailableError` and its
subclass :class:`~tieredcache.errors.BackendTimeoutError`). A server that *answered* with an
error about one key (:class:`~tieredcache.errors.BackendResponseError`: a key of another
type, out of memory, read-only) is up, and so is one that returned a payload that does not
decode: :meth:`CircuitBreaker.record` counts those as successes.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t

from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import ConfigurationError

__all__ = ["CircuitBreaker", "CircuitOpenError", "is_availability_failure"]

logger = logging.getLogger("tieredcache.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitOpenError(BackendUnavailableError):
    """The tier was not called: its circuit breaker is open after repeated failures."""


def is_availability_failure(exc: BaseException) -> bool:
    """True if ``exc`` means the tier could not answer (what opens a breaker).

    :class:`~tieredcache.errors.BackendUnavailableError` and
    :class:`~tieredcache.errors.BackendTimeoutError` are; a
    :class:`~tieredcache.errors.BackendResponseError` (the server answered), any other
    error, and a :class:`CircuitOpenError` (the breaker's own refusal, not a call) are not.
    """
    return isinstance(exc, BackendUnavailableError) and not isinstance(exc, CircuitOpenError)


class CircuitBreaker:
    """Counts consecutive failures of one tier and refuses calls while it is open.

    Thread-safe. In the half-open state exactly one caller probes the tier; the others are
    refused until the probe's outcome is known.

    :param failures: consecutive failures that open the circuit.
    :param reset_after: seconds the circuit stays open before a probe is allowed.
    :param clock: a monotonic clock in seconds (tests pass a fake one).
    :param name: a label for logs.
    """

    def __init__(
        self,
        failures: int = 5,
        reset_after: float = 5.0,
        *,
        clock: t.Callable[[], float] = time.monotonic,
        name: str = "l2",
    ) -> None:
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise ConfigurationError(f"failures must be a positive int, not {failures!r}")
        if not isinstance(reset_after, (int, float)) or reset_after <= 0:
            raise ConfigurationError(f"reset_after must be positive seconds, not {reset_after!r}")
        self.failures = failures
        self.reset_after = float(reset_after)
        self.clock = clock
        self.name = name
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._opened = 0
        self._refused = 0
        self._on_close: list[t.Callable[[], None]] = []
        self._on_open: list[t.Callable[[], None]] = []

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        with self._lock:
            if self._state == OPEN and self.clock() - self._opened_at >= self.reset_after:
                return HALF_OPEN
            return self._state

    def on_close(self, callback: t.Callable[[], None]) -> None:
        """Call ``callback`` (outside the lock) each time the circuit closes again."""
        self._on_close.append(callback)

    def on_open(self, callback: t.Callable[[], None]) -> None:
        """Call ``callback`` (outside the lock) each time the circuit opens."""
        self._on_open.append(callback)

    def allow(self) -> bool:
        """True if a call may go to the tier now (a half-open circuit admits one probe)."""
        if self._state == CLOSED:  # one attribute read: no lock on the common path
            return True
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and self.clock() - self._opened_at >= self.reset_after:
                self._state = HALF_OPEN
                self._probing = False
                logger.info("circuit %s half-open: probing", self.name)
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            self._refused += 1
            return False

    def record_success(self) -> None:
        """The call succeeded."""
        if self._state == CLOSED and self._consecutive == 0:  # nothing to reset
            return
        with self._lock:
            self._consecutive = 0
            if self._state == CLOSED:
                return
            self._state = CLOSED
            self._probing = False
        logger.warning("circuit %s closed: the tier answers again", self.name)
        for callback in self._on_close:
            try:
                callback()
            except Exception:
                logger.exception("circuit %s: on_close callback raised", self.name)

    def record_failure(self) -> None:
        """The call failed for want of the tier (see :func:`is_availability_failure`); a
        caller that has the exception can pass it to :meth:`record` instead."""
        with self._lock:
            self._consecutive += 1
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._consecutive >= self.failures
            ):
                self._state = OPEN
                self._opened_at = self.clock()
                self._probing = False
                self._opened += 1
                opened = True
            else:
                opened = False
        if opened:
            logger.warning(
                "circuit %s open after %d consecutive failures: calls refused for %.1f s",
                self.name,
                self._consecutive,
                self.reset_after,
            )
            for callback in self._on_open:
                try:
                    callback()
                except Exception:
                    logger.exception("circuit %s: on_open callback raised", self.name)

    def record(self, exc: BaseException | None) -> None:
        """Record the outcome of a call: ``None`` for a success, or what it raised.

        Only an availability failure (:func:`is_availability_failure`) counts as a failure;
        any other exception means the tier answered, which is a success for the breaker.
        """
        if exc is not None and is_availability_failure(exc):
            self.record_failure()
        else:
            self.record_success()

    def stats(self) -> dict[str, t.Any]:
        """State and counters."""
        state = self.state
        with self._lock:
            return {
                "state": state,
                "consecutive_failures": self._consecutive,
                "times_opened": self._opened,
                "refused": self._refused,
            }

    def __repr__(self) -> str:
        return f"CircuitBreaker(failures={self.failures}, reset_after={self.reset_after})"
