"""
Replay items
============

A write, delete or touch whose L2 leg failed under fail-open waits in the L2 gate's replay
queue as a :class:`ReplayItem` (one per key, the newest winning). The factories here build
the item of each kind of write; :func:`replay_op` is the L2 part of replaying one.
"""

from __future__ import annotations

import typing as t

from tieredcache.entry import Entry

if t.TYPE_CHECKING:
    from tieredcache.tiered.l2gate import L2Gate

__all__ = [
    "ReplayFactory",
    "ReplayItem",
    "delete_replay",
    "replay_op",
    "set_replay",
    "touch_replay",
]


class ReplayItem(t.NamedTuple):
    """An L2 write that failed under fail-open and waits to be replayed."""

    op: str  # "set", "delete" or "touch"
    seq: int  # the ordering sequence number of the failed write
    entry: Entry | None  # for "set"
    expires_at: float | None  # for "touch"


ReplayFactory = t.Callable[[str, int], ReplayItem]
"""Builds the replay item of a key whose L2 write at ``seq`` failed."""


def delete_replay(key: str, seq: int) -> ReplayItem:
    """The replay factory of a delete."""
    return ReplayItem("delete", seq, None, None)


def set_replay(items: t.Mapping[str, Entry]) -> ReplayFactory:
    """The replay factory of a set of ``items``."""
    return lambda key, seq: ReplayItem("set", seq, items[key], None)


def touch_replay(expires_at: float | None) -> ReplayFactory:
    """The replay factory of a touch to ``expires_at``."""
    return lambda key, seq: ReplayItem("touch", seq, None, expires_at)


def replay_op(gate: L2Gate, key: str, item: ReplayItem) -> t.Callable[[list[str]], object]:
    """The L2 part of replaying ``item`` for ``key``: skipped (``None``) when L2 holds a
    write newer than it, made by another process meanwhile."""

    def op(_: list[str]) -> bool | None:
        # Last writer wins across processes: a write another process made after this one
        # (versions are comparable wall-clock times) is not overwritten by the late replay.
        current = gate.call(gate.l2.get_entry, key)
        if current is not None and current.version > item.seq:
            return None
        if item.op == "set":
            assert item.entry is not None
            gate.call(gate.l2.set_entry, key, item.entry)
        elif item.op == "delete":
            gate.call(gate.l2.delete, key)
        else:
            gate.call(gate.l2.touch_entry, key, item.expires_at)
        return True

    return op
