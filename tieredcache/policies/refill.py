"""Refill: whether a read that found the value only in L2 copies it into L1."""

from __future__ import annotations

import enum

__all__ = ["Refill"]


class Refill(enum.Enum):
    """What a read does after an L2 hit.

    ``ALWAYS`` writes the fresh L2 entry into L1 with ``expires_at = min(L2's expires_at,
    now + l1_ttl)``; the refill never overwrites a newer L1 value (a write or delete of the
    key since the read began cancels it), and its failure never changes what the read
    returns. ``NEVER``: reads never write.
    """

    ALWAYS = "always"
    NEVER = "never"
