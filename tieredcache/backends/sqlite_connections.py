"""The connections of a :class:`~tieredcache.backends.sqlite.SQLiteBackend`: one per
thread, opened on first use in WAL mode with the table's schema, closed when the thread ends,
on ``close`` and at collection, and never touched in a forked child (which opens its own)."""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import threading
import time
import typing as t
import weakref

__all__ = ["Connections", "connect", "is_busy"]

logger = logging.getLogger("tieredcache")

_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)

# Connections a forked child inherited from its parent. They are never used, closed or
# collected in the child: closing one there could disturb the parent's locks and WAL file.
_INHERITED: list[sqlite3.Connection] = []


class _Holder:
    """A thread's connection, kept in its local storage; dropped when the thread ends."""

    __slots__ = ("__weakref__", "conn", "generation")

    def __init__(self, conn: sqlite3.Connection, generation: int) -> None:
        self.conn = conn
        self.generation = generation


class Connections:
    """The connections one backend opened in one process, one per thread.

    A thread's connection is closed when the thread ends, when :meth:`close_all` runs (the
    next call in that thread opens a new one), when the backend is collected, and at exit.
    Holds no reference to the backend, so that an unclosed backend can still be collected.
    """

    def __init__(self, path: str, timeout: float, schema: t.Sequence[str]) -> None:
        self.path = path
        self.timeout = timeout
        self.schema = schema
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.local = threading.local()
        self.open: dict[int, sqlite3.Connection] = {}
        self.generation = 0
        self._ids = itertools.count()

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        holder: _Holder | None = getattr(self.local, "holder", None)
        if holder is not None and holder.generation == self.generation:
            return holder.conn
        return self._open()

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, self.timeout, self.schema)
        ident = next(self._ids)
        with self.lock:
            self.open[ident] = conn
            holder = _Holder(conn, self.generation)
        weakref.finalize(holder, self.release, ident)
        self.local.holder = holder
        return conn

    def release(self, ident: int) -> None:
        """Close one thread's connection (its thread ended or it was replaced)."""
        if os.getpid() != self.pid:
            return
        with self.lock:
            conn = self.open.pop(ident, None)
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                logger.warning("sqlite: closing a connection to %s failed: %s", self.path, exc)

    def close_all(self) -> None:
        """Close every connection; threads open new ones on their next call."""
        if os.getpid() != self.pid:
            return
        with self.lock:
            conns = list(self.open.values())
            self.open.clear()
            self.generation += 1
        failure: sqlite3.Error | None = None
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def abandon(self) -> None:
        """In a forked child: keep the parent's connections alive but never touch them.

        Takes no lock, which a thread that did not survive the fork may hold.
        """
        _INHERITED.extend(self.open.values())
        self.open = {}


def connect(path: str, timeout: float, schema: t.Sequence[str]) -> sqlite3.Connection:
    """A new autocommit connection to ``path`` in WAL mode, with ``schema`` created."""
    # isolation_level=None: autocommit; transactions are explicit BEGIN IMMEDIATE ... COMMIT.
    # timeout= sets SQLite's busy timeout, the wait for another connection's lock.
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        # Switching a new file to WAL fails at once with "database is locked" while another
        # connection switches it (SQLite does not call the busy handler there), so the setup
        # is retried, briefly and within the timeout. It is idempotent.
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                _prepare(conn, schema)
                break
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, schema: t.Sequence[str]) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in schema:
        conn.execute(statement)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is SQLite's "busy" or "locked": another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in _BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text
