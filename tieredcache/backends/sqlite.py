"""
SQLite file
===========

:class:`SQLiteBackend` keeps entries in one SQLite file that every process on the host
shares. It is the embedded default L2 when no server is configured, and needs nothing beyond
the standard library.

Each row holds the whole envelope (:class:`~tieredcache.serializers.EntryCodec`), so an
entry's ``expires_at``, ``stale_at`` and ``version`` round-trip exactly; an ``expires_at``
column duplicates the header's expiry so that reads filter and purges delete in SQL.

The file runs in WAL mode, so readers never wait for the writer. Every thread gets its own
connection, opened on first use; read-modify-write operations (``add``, ``incr``, ``touch``,
batches, culling) run in one ``BEGIN IMMEDIATE`` transaction, which makes them atomic across
threads and processes. A forked child never uses its parent's connections: it notices the new
process id and opens its own. Expired rows are purged lazily, every few hundred writes, and
``max_entries`` bounds the row count by culling the rows that expire soonest.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sqlite3
import typing as t
import weakref

from tieredcache.backends.base import Backend
from tieredcache.backends.sqlite_connections import Connections
from tieredcache.backends.sqlite_connections import is_busy
from tieredcache.entry import Entry
from tieredcache.entry import Timer
from tieredcache.entry import next_version
from tieredcache.errors import BackendError
from tieredcache.errors import BackendResponseError
from tieredcache.errors import BackendTimeoutError
from tieredcache.errors import BackendUnavailableError
from tieredcache.errors import ConfigurationError
from tieredcache.errors import DeserializationError
from tieredcache.errors import InvalidKeyError
from tieredcache.errors import ValueTooLargeError
from tieredcache.keyglob import compile_glob
from tieredcache.keyglob import literal_prefix
from tieredcache.serializers import EntryCodec
from tieredcache.serializers import Serializer
from tieredcache.stats import Counters

__all__ = ["SQLiteBackend", "default_path"]

logger = logging.getLogger("tieredcache")

T = t.TypeVar("T")

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CHUNK = 500  # keys per IN (...) list, well under SQLite's bound-parameter limit
_TOOBIG = 18  # SQLITE_TOOBIG: a value over the file's length limit


def default_path() -> str:
    """The file used when no path is given: ``$XDG_CACHE_HOME/tieredcache/default.sqlite3``.

    Without ``XDG_CACHE_HOME`` (or with a relative one, which the XDG specification says to
    ignore) the directory is ``~/.cache`` (``%LOCALAPPDATA%`` on Windows). The directories are
    not created here; :class:`SQLiteBackend` creates them when it uses this path.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base or not os.path.isabs(base):
        local = os.environ.get("LOCALAPPDATA", "") if os.name == "nt" else ""
        base = local or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tieredcache", "default.sqlite3")


class SQLiteBackend(Backend):
    """A store in one SQLite file shared by every thread and process on the host.

    Thread-safe and multi-process safe: each thread has its own connection, and every
    read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction.

    :param path: the database file; ``None`` uses :func:`default_path` (creating its
        directories). ``":memory:"`` is refused: such a database cannot be shared, so use
        :class:`~tieredcache.MemoryBackend` instead.
    :param table: the table holding the entries (letters, digits and ``_``); several caches
        can share one file with different tables.
    :param serializer: the payload serializer (pickle by default).
    :param default_ttl: the TTL used when a call passes none.
    :param timer: the clock, in epoch seconds.
    :param timeout: seconds a call waits for another connection's lock before failing with
        :class:`~tieredcache.errors.BackendTimeoutError`.
    :param max_entries: the most rows the table holds after any write of this backend
        returns; ``None`` = unbounded. A write that goes past it deletes the expired rows
        and the ``cull_fraction`` of the bound that expires soonest (never-expiring rows
        last), in the write's own transaction. The bound costs a row count per write.
    :param cull_fraction: the share of ``max_entries`` a cull frees, in ``(0, 1]``.
    :raises ConfigurationError: an option is invalid, or the default directory cannot be
        created.
    """

    name = "sqlite"
    _driver_errors = (sqlite3.Error,)

    #: Writes (per backend, in a process) between two purges of expired rows.
    purge_every: t.ClassVar[int] = 256

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        table: str = "tieredcache",
        serializer: Serializer | None = None,
        default_ttl: float | None = None,
        timer: Timer | None = None,
        timeout: float = 5.0,
        max_entries: int | None = None,
        cull_fraction: float = 0.1,
    ) -> None:
        super().__init__(default_ttl=default_ttl, timer=timer)
        self.path = _resolve_path(path)
        self.table = _check_table(table)
        self.timeout = _check_timeout(timeout)
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1
        ):
            raise ConfigurationError(
                f"max_entries must be a positive int or None, not {max_entries!r}"
            )
        if (
            isinstance(cull_fraction, bool)
            or not isinstance(cull_fraction, (int, float))
            or not 0 < cull_fraction <= 1
        ):
            raise ConfigurationError(f"cull_fraction must be in (0, 1], not {cull_fraction!r}")
        self.max_entries = max_entries
        self.cull_fraction = float(cull_fraction)
        self._codec = EntryCodec(serializer)
        self.serializer = self._codec.serializer
        self._sql = _Statements(self.table)
        self._housekeeping = Counters(("purged", "culled"))
        # Not locked: a lost update only moves the next purge by a write or two.
        self._writes_since_purge = 0
        self._conns = Connections(self.path, self.timeout, self._sql.schema)
        self._finalizer = weakref.finalize(self, self._conns.close_all)

    # -- connections --------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conns = self._conns
        if conns.pid != os.getpid():
            conns = self._forget_parent_connections()
        return conns.get()

    def _forget_parent_connections(self) -> Connections:
        """In a forked child: set the parent's connections aside and start a fresh set."""
        old = self._conns
        if old.pid == os.getpid():  # another thread of this child got here first
            return old
        self._finalizer.detach()
        old.abandon()
        conns = Connections(self.path, self.timeout, self._sql.schema)
        self._conns = conns
        self._finalizer = weakref.finalize(self, conns.close_all)
        self._writes_since_purge = 0
        return conns

    @contextlib.contextmanager
    def _immediate(self, conn: sqlite3.Connection) -> t.Iterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction, committed on success, rolled back on error.

        The write lock is taken up front, so the reads inside see what the writes replace.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the connection is broken or closed; the original error says why
            raise

    # -- reads ----------------------------------------------------------------------------

    def _get(self, key: str) -> Entry | None:
        rows = self._connection().execute(self._sql.get, (key, self._now())).fetchall()
        if not rows:
            return None
        return self._decode(self._codec, key, rows[0][0])

    def _get_many(self, keys: list[str]) -> dict[str, Entry]:
        conn = self._connection()
        now = self._now()
        found: dict[str, Entry] = {}
        for chunk in _chunks(keys):
            sql = self._sql.get_many(len(chunk))
            for key, data in conn.execute(sql, (*chunk, now)).fetchall():
                entry = self._decode(self._codec, key, data)
                if entry is not None:
                    found[key] = entry
        return found

    def _live_entry(self, conn: sqlite3.Connection, key: str, now: float) -> Entry | None:
        """The unexpired, decodable entry under ``key`` (call inside a transaction)."""
        rows = conn.execute(self._sql.get, (key, now)).fetchall()
        if not rows:
            return None
        entry = self._decode(self._codec, key, rows[0][0])
        if entry is None or entry.expired(now):
            return None
        return entry

    # -- writes ---------------------------------------------------------------------------

    def _set(self, key: str, entry: Entry) -> None:
        data = self._codec.encode(entry)  # before touching the file: a failure writes nothing
        conn = self._connection()
        if self.max_entries is None:
            conn.execute(self._sql.put, (key, data, entry.expires_at))
        else:
            with self._immediate(conn):
                conn.execute(self._sql.put, (key, data, entry.expires_at))
                self._cull_in_transaction(conn, (key,))
        self._count_writes(conn, 1)

    def _set_many(self, items: dict[str, Entry]) -> None:
        rows = [(key, self._codec.encode(entry), entry.expires_at) for key, entry in items.items()]
        conn = self._connection()
        with self._immediate(conn):
            conn.executemany(self._sql.put, rows)
            if self.max_entries is not None:
                self._cull_in_transaction(conn, items.keys())
        self._count_writes(conn, len(rows))

    def _add(self, key: str, entry: Entry) -> bool:
        data = self._codec.encode(entry)
        conn = self._connection()
        with self._immediate(conn):
            # A payload that does not decode counts as absent, as it does for get().
            if self._live_entry(conn, key, self._now()) is not None:
                return False
            conn.execute(self._sql.put, (key, data, entry.expires_at))
            if self.max_entries is not None:
                self._cull_in_transaction(conn, (key,))
        self._count_writes(conn, 1)
        return True

    def _incr(self, key: str, delta: int) -> int:
        conn = self._connection()
        with self._immediate(conn):
            current = self._live_entry(conn, key, self._now())
            if current is None:
                raise KeyError(key)
            value = current.value
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"the value under {key!r} is not an integer")
            result = value + delta
            updated = Entry(result, current.expires_at, next_version(), current.stale_at)
            conn.execute(self._sql.update, (self._codec.encode(updated), key))
        return result

    def _touch(self, key: str, expires_at: float | None) -> bool:
        conn = self._connection()
        with self._immediate(conn):
            now = self._now()
            rows = conn.execute(self._sql.get, (key, now)).fetchall()
            if not rows:
                return False
            data = rows[0][0]
            try:
                old_expires_at = EntryCodec.read_header(data)[0]
                if old_expires_at is not None and old_expires_at <= now:
                    return False
                # A signed payload is verified and signed again under its new header.
                updated = self._codec.retime(data, expires_at)
            except DeserializationError as exc:
                self._corrupt(key, exc)
                return False
            conn.execute(self._sql.retime, (updated, expires_at, key))
        return True

    def _delete(self, key: str) -> bool:
        return self._connection().execute(self._sql.delete, (key,)).rowcount > 0

    def _delete_many(self, keys: list[str]) -> int:
        conn = self._connection()
        deleted = 0
        with self._immediate(conn):
            for chunk in _chunks(keys):
                deleted += conn.execute(self._sql.delete_many(len(chunk)), chunk).rowcount
        return deleted

    def _clear(self) -> None:
        self._connection().execute(self._sql.clear)

    def _iter_keys(self, pattern: str) -> t.Iterator[str]:
        # GLOB narrows the scan to the pattern's literal start (through the primary key);
        # the compiled pattern then decides, with Redis's syntax, which keys match.
        match = compile_glob(pattern).match
        start = "".join(f"[{c}]" if c in "*?[]" else c for c in literal_prefix(pattern))
        rows = self._connection().execute(self._sql.keys, (start + "*", self._now()))
        return iter([key for (key,) in rows.fetchall() if match(key)])

    def _invalidate_pattern(self, pattern: str) -> int:
        match = compile_glob(pattern).match
        start = "".join(f"[{c}]" if c in "*?[]" else c for c in literal_prefix(pattern))
        conn = self._connection()
        deleted = 0
        with self._immediate(conn):
            now = self._now()
            rows = conn.execute(self._sql.keys_all, (start + "*",)).fetchall()
            doomed = [(key, expires_at) for key, expires_at in rows if match(key)]
            for chunk in _chunks([key for key, _ in doomed]):
                conn.execute(self._sql.delete_many(len(chunk)), chunk)
            deleted = sum(1 for _, at in doomed if at is None or at > now)
        return deleted

    def _close(self) -> None:
        self._conns.close_all()

    # -- housekeeping ---------------------------------------------------------------------

    def _count_writes(self, conn: sqlite3.Connection, count: int) -> None:
        """Purge expired rows every :attr:`purge_every` writes; a failed purge is logged."""
        writes = self._writes_since_purge + count
        if writes < self.purge_every:
            self._writes_since_purge = writes
            return
        self._writes_since_purge = 0
        try:
            self._purge(conn)
        except sqlite3.Error as exc:  # the write itself succeeded; purge again next time
            logger.warning("sqlite: purging expired rows of %s failed: %s", self.path, exc)

    def _purge(self, conn: sqlite3.Connection) -> int:
        purged = int(conn.execute(self._sql.purge, (self._now(),)).rowcount)
        if purged:
            self._housekeeping.incr("purged", purged)
        return purged

    def purge_expired(self) -> int:
        """Delete every expired row now; how many were deleted.

        :raises BackendError: the file could not be written.
        """
        return self._call(lambda: self._purge(self._connection()))

    def _cull_in_transaction(self, conn: sqlite3.Connection, written: t.Iterable[str]) -> None:
        """Bring the row count back under ``max_entries`` after a write, in its transaction.

        Deletes the expired rows, then the rows that expire soonest (never-expiring ones
        last) until the count is ``cull_fraction`` of the bound below it. The rows this
        write stored go last, so a write is not undone by its own cull unless the write
        alone exceeds the bound.
        """
        limit = self.max_entries
        assert limit is not None
        count = int(conn.execute(self._sql.count).fetchone()[0])
        if count <= limit:
            return
        count -= self._purge(conn)
        if count <= limit:
            return
        target = max(limit - math.ceil(limit * self.cull_fraction), 0)
        fresh = set(written)
        want = count - target
        candidates = self._soonest(conn, want + len(fresh))
        victims = [key for key in candidates if key not in fresh][:want]
        overflow = count - len(victims) - limit
        if overflow > 0:
            victims += [key for key in candidates if key in fresh][:overflow]
        conn.executemany(self._sql.delete, [(key,) for key in victims])
        self._housekeeping.incr("culled", len(victims))

    def _soonest(self, conn: sqlite3.Connection, limit: int) -> list[str]:
        """Up to ``limit`` keys in the order they expire, never-expiring rows last."""
        keys = [row[0] for row in conn.execute(self._sql.soonest, (limit,)).fetchall()]
        if len(keys) < limit:
            rows = conn.execute(self._sql.forever, (limit - len(keys),)).fetchall()
            keys += [row[0] for row in rows]
        return keys

    # -- errors and introspection -----------------------------------------------------------

    def admit(self, items: t.Mapping[str, Entry]) -> None:
        """Refuse a key that is not valid UTF-8 (SQLite stores keys as text)."""
        for key in items:
            try:
                key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidKeyError(f"sqlite keys must be valid UTF-8: {exc}") from exc

    def _call(self, fn: t.Callable[..., T], *args: t.Any) -> T:
        try:
            return super()._call(fn, *args)
        except UnicodeEncodeError as exc:  # only keys are bound as text
            raise InvalidKeyError(f"sqlite keys must be valid UTF-8: {exc}") from exc

    def _translate(self, exc: BaseException) -> BackendError:
        message = f"{type(exc).__name__}: {exc} ({self.path})"
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
        text = str(exc).lower()
        if isinstance(exc, sqlite3.OperationalError):
            if is_busy(exc) or "locked" in text or "busy" in text:
                return BackendTimeoutError(message, backend=self.name)
            return BackendUnavailableError(message, backend=self.name)
        if code == _TOOBIG or (isinstance(exc, sqlite3.DataError) and "too big" in text):
            return ValueTooLargeError(message, backend=self.name)
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
            # close() ran in another thread while this call used its connection.
            return BackendUnavailableError(message, backend=self.name)
        if isinstance(exc, sqlite3.DatabaseError):
            return BackendResponseError(message, backend=self.name)
        return BackendError(message, backend=self.name)

    @property
    def call_timeout(self) -> float | None:
        """The longest one call waits: the connect and the reply timeouts."""
        return self.timeout

    def _stats_extra(self) -> dict[str, t.Any]:
        figures: dict[str, t.Any] = {
            "path": self.path,
            "table": self.table,
            "connections": len(self._conns.open),
            "max_entries": self.max_entries,
        }
        figures.update(self._housekeeping.snapshot())
        return figures

    def __repr__(self) -> str:
        bound = "" if self.max_entries is None else f" max_entries={self.max_entries}"
        return f"<SQLiteBackend path={self.path!r} table={self.table!r}{bound}>"


class _Statements:
    """The SQL of one table, built once (the table name is a checked identifier)."""

    def __init__(self, table: str) -> None:
        q = f'"{table}"'
        live = "(expires_at IS NULL OR expires_at > ?)"
        self.schema = (
            f"CREATE TABLE IF NOT EXISTS {q} ("
            "key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL) WITHOUT ROWID",
            f'CREATE INDEX IF NOT EXISTS "{table}_expires_at" ON {q} (expires_at)',
        )
        self.get = f"SELECT value FROM {q} WHERE key = ? AND {live}"
        self._get_many = f"SELECT key, value FROM {q} WHERE key IN ({{}}) AND {live}"
        self.put = f"INSERT OR REPLACE INTO {q} (key, value, expires_at) VALUES (?, ?, ?)"
        self.update = f"UPDATE {q} SET value = ? WHERE key = ?"
        self.retime = f"UPDATE {q} SET value = ?, expires_at = ? WHERE key = ?"
        self.delete = f"DELETE FROM {q} WHERE key = ?"
        self._delete_many = f"DELETE FROM {q} WHERE key IN ({{}})"
        self.clear = f"DELETE FROM {q}"
        self.keys = f"SELECT key FROM {q} WHERE key GLOB ? AND {live}"
        self.keys_all = f"SELECT key, expires_at FROM {q} WHERE key GLOB ?"
        self.purge = f"DELETE FROM {q} WHERE expires_at <= ?"
        self.count = f"SELECT COUNT(*) FROM {q}"
        self.soonest = (
            f"SELECT key FROM {q} WHERE expires_at IS NOT NULL ORDER BY expires_at LIMIT ?"
        )
        self.forever = f"SELECT key FROM {q} WHERE expires_at IS NULL LIMIT ?"

    def get_many(self, count: int) -> str:
        return self._get_many.format(", ".join("?" * count))

    def delete_many(self, count: int) -> str:
        return self._delete_many.format(", ".join("?" * count))


def _chunks(keys: list[str]) -> t.Iterator[list[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def _resolve_path(path: str | os.PathLike[str] | None) -> str:
    if path is None:
        resolved = default_path()
        directory = os.path.dirname(resolved)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the cache directory {directory!r} ({exc}); pass path="
            ) from exc
        return resolved
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigurationError(f"path must be a str, a path or None, not {path!r}")
    text = os.fsdecode(path)
    if text in ("", ":memory:") or text.startswith("file::memory:"):
        raise ConfigurationError(
            f"SQLiteBackend needs a file that processes can share, not {text!r}; "
            "use MemoryBackend for an in-process store"
        )
    return os.path.abspath(os.path.expanduser(text))


def _check_table(table: t.Any) -> str:
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        raise ConfigurationError(
            f"table must be an identifier (letters, digits and _, not first a digit), not {table!r}"
        )
    if table.lower().startswith("sqlite_"):
        raise ConfigurationError(f"table names starting with sqlite_ are reserved: {table!r}")
    return table


def _check_timeout(timeout: t.Any) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or math.isnan(timeout)
        or math.isinf(timeout)
        or timeout < 0
    ):
        raise ConfigurationError(
            f"timeout must be a finite number of seconds >= 0, not {timeout!r}"
        )
    return float(timeout)
