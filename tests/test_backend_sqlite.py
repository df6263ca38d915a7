"""SQLiteBackend: the contract, plus sharing one file between threads and processes."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import pathlib
import queue
import sqlite3
import subprocess
import sys
import textwrap
import threading
import typing as t
import warnings

import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tieredcache import BackendError
from tieredcache import BackendResponseError
from tieredcache import BackendTimeoutError
from tieredcache import BackendUnavailableError
from tieredcache import ConfigurationError
from tieredcache import Entry
from tieredcache import EntryCodec
from tieredcache import InvalidKeyError
from tieredcache import MemoryBackend
from tieredcache import PickleSerializer
from tieredcache import SerializationError
from tieredcache import SignedSerializer
from tieredcache import TieredCache
from tieredcache.backends.sqlite import SQLiteBackend
from tieredcache.backends.sqlite import default_path
from tieredcache.serializers import Serializer
from tieredcache.testing.clock import FakeClock
from tieredcache.testing.clock import wait_until
from tieredcache.testing.contract import BackendContract

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

SERIALIZERS: dict[str, t.Callable[[], Serializer | None]] = {
    "pickle": lambda: None,
    "signed": lambda: SignedSerializer("secret"),
}


def _raw(path: str | os.PathLike[str]) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection to the file, closed on leaving the ``with`` block."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def _rows(backend: SQLiteBackend) -> int:
    with _raw(backend.path) as raw:
        return int(raw.execute(f'SELECT COUNT(*) FROM "{backend.table}"').fetchone()[0])


@pytest.fixture
def backends() -> t.Iterator[list[SQLiteBackend]]:
    """Backends a test made, closed at teardown."""
    made: list[SQLiteBackend] = []
    yield made
    for backend in made:
        backend.close()


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> str:
    return str(tmp_path / "cache.sqlite3")


@pytest.fixture
def make(db_path: str, backends: list[SQLiteBackend]) -> t.Callable[..., SQLiteBackend]:
    """``make(**options)``: a backend on the test's file, closed at teardown."""

    def factory(**options: t.Any) -> SQLiteBackend:
        backend = SQLiteBackend(options.pop("path", db_path), **options)
        backends.append(backend)
        return backend

    return factory


class TestSQLiteBackend(BackendContract):
    @pytest.fixture(
        params=[
            ("pickle", "tieredcache"),
            ("pickle", "other_table"),
            ("signed", "tieredcache"),
            ("signed", "other_table"),
        ],
        ids=lambda p: "-".join(p),
    )
    def make_backend(
        self, request: pytest.FixtureRequest, make: t.Callable[..., SQLiteBackend]
    ) -> t.Callable[..., SQLiteBackend]:
        serializer, table = request.param

        def factory(**options: t.Any) -> SQLiteBackend:
            options.setdefault("serializer", SERIALIZERS[serializer]())
            return make(table=table, **options)

        return factory

    def write_raw(self, backend: SQLiteBackend, key: str, data: bytes) -> None:  # type: ignore[override]
        backend.delete(key)  # makes sure the table exists
        with _raw(backend.path) as raw:
            raw.execute(
                f'INSERT OR REPLACE INTO "{backend.table}" (key, value, expires_at) '
                "VALUES (?, ?, NULL)",
                (key, data),
            )


# -- storage layout -------------------------------------------------------------------------


def test_rows_hold_the_envelope_and_its_expiry(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock)
    entry = Entry([1, 2], expires_at=clock() + 30, version=42, stale_at=clock() + 10)
    backend.set_entry("k", entry)
    backend.set("forever", "f", ttl=None)
    with _raw(backend.path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = dict(
            (key, (value, expires_at))
            for key, value, expires_at in raw.execute("SELECT * FROM tieredcache")
        )
    data, expires_at = rows["k"]
    assert expires_at == entry.expires_at
    assert EntryCodec(PickleSerializer()).decode(data) == entry
    assert rows["forever"][1] is None


@pytest.mark.parametrize("forged", [42, 1.5, "TC plain text"], ids=["int", "real", "text"])
def test_a_value_column_that_is_not_bytes_reads_as_a_miss(
    make: t.Callable[..., SQLiteBackend], db_path: str, forged: t.Any
) -> None:
    # Another program wrote a number or text where an envelope belongs.
    backend = make()
    backend.set("k", "placeholder")
    with contextlib.closing(sqlite3.connect(db_path)) as raw:
        raw.execute(f'UPDATE "{backend.table}" SET value = ? WHERE key = ?', (forged, "k"))
        raw.commit()
    assert backend.get("k") is None
    assert backend.get_many(["k", "other"]) == {}
    with pytest.raises(KeyError):
        backend.incr("k")
    assert backend.add("k", "mine") is True  # a miss: the key is free
    assert backend.get("k") == "mine"
    assert backend.stats()["corrupt"] >= 2


def test_tables_in_one_file_are_independent(make: t.Callable[..., SQLiteBackend]) -> None:
    first, second = make(table="first"), make(table="second")
    first.set("k", 1)
    second.set("k", 2)
    second.clear()
    assert first.get("k") == 1
    assert second.get("k") is None


def test_touch_keeps_payload_stale_at_and_version(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock)
    entry = Entry("v", expires_at=clock() + 5, version=7, stale_at=clock() + 2)
    backend.set_entry("k", entry)
    assert backend.touch_entry("k", clock() + 500) is True
    assert backend.get_entry("k") == entry.replace(expires_at=clock() + 500)
    with _raw(backend.path) as raw:
        column = raw.execute("SELECT expires_at FROM tieredcache WHERE key = 'k'").fetchone()[0]
    assert column == clock() + 500


def test_incr_keeps_expiry_and_bumps_version(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock)
    backend.set_entry("n", Entry(1, expires_at=clock() + 9, version=5, stale_at=clock() + 3))
    assert backend.incr("n", 2**70) == 2**70 + 1
    after = backend.get_entry("n")
    assert after is not None
    assert (after.expires_at, after.stale_at) == (clock() + 9, clock() + 3)
    assert after.version > 5
    backend.set("flag", True)
    with pytest.raises(TypeError):
        backend.incr("flag")


def test_unserializable_batch_writes_nothing(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    with pytest.raises(SerializationError):
        backend.set_many({f"k{i}": i for i in range(5)} | {"bad": threading.Lock()})
    assert not pathlib.Path(backend.path).exists()  # the file was not even opened
    backend.set("kept", 1)
    with pytest.raises(SerializationError):
        backend.set_many({f"k{i}": i for i in range(5)} | {"bad": threading.Lock()})
    assert _rows(backend) == 1


def test_many_keys_span_several_chunks(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    items = {f"k{i}": i for i in range(1_234)}
    backend.set_many(items)
    assert backend.get_many([*items, "missing"]) == items
    assert backend.delete_many(list(items)[:1_100]) == 1_100
    assert _rows(backend) == 134


def test_key_that_is_not_utf8_is_refused(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    with pytest.raises(InvalidKeyError):
        backend.set("lone \ud800 surrogate", 1)


# -- expiry and the row bound ---------------------------------------------------------------


def test_a_composition_refuses_a_key_sqlite_cannot_hold_before_writing_l1(
    make: t.Callable[..., SQLiteBackend],
) -> None:
    cache = TieredCache(MemoryBackend(), make())
    cache.set("good", "old")
    with pytest.raises(InvalidKeyError):
        cache.set("user:\ud800", "v")
    with pytest.raises(InvalidKeyError):
        cache.set_many({"good": "new", "user:\ud800": "v"})
    assert cache.l1.get("user:\ud800") is None
    assert cache.l1.get("good") == "old" and cache.l2.get("good") == "old"


def test_expired_rows_are_purged_after_enough_writes(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock)
    backend.set_many({f"old{i}": i for i in range(20)}, ttl=1)
    backend.set("kept", "v", ttl=None)
    clock.advance(2)
    assert _rows(backend) == 21  # expired rows stay until a purge
    for i in range(SQLiteBackend.purge_every):
        backend.set("live", i, ttl=60)
    assert _rows(backend) == 2
    assert backend.stats()["purged"] == 20


def test_purge_expired(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock)
    backend.set_many({"a": 1, "b": 2}, ttl=1)
    backend.set("c", 3, ttl=10)
    clock.advance(1)
    assert backend.purge_expired() == 2
    assert _rows(backend) == 1


def test_cull_removes_the_soonest_to_expire(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock, max_entries=10, cull_fraction=0.3)
    backend.set("forever", 0, ttl=None)
    for i in range(1, 10):
        backend.set(f"k{i}", i, ttl=100 + i)
    assert _rows(backend) == 10
    backend.set("new", "n", ttl=1)  # expires first of all, but was just written
    assert _rows(backend) == 7
    kept = backend.get_many(["forever", "new", *(f"k{i}" for i in range(1, 10))])
    assert set(kept) == {"forever", "new", "k5", "k6", "k7", "k8", "k9"}
    assert backend.stats()["culled"] == 4


def test_cull_takes_expired_rows_first(make: t.Callable[..., SQLiteBackend]) -> None:
    clock = FakeClock()
    backend = make(timer=clock, max_entries=5)
    backend.set_many({"a": 1, "b": 2}, ttl=1)
    backend.set_many({"c": 3, "d": 4, "e": 5}, ttl=None)
    clock.advance(1)
    backend.set("f", 6)
    assert _rows(backend) == 4
    assert backend.get_many(list("cdef")) == {"c": 3, "d": 4, "e": 5, "f": 6}


def test_a_batch_larger_than_the_bound(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make(max_entries=3)
    backend.set_many({f"k{i}": i for i in range(10)})
    assert _rows(backend) == 3


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(min_value=1, max_value=6),
    fraction=st.sampled_from([0.1, 0.5, 1.0]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["set", "add", "set_many", "advance"]),
            st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=3, unique=True),
            st.sampled_from([None, 1, 5, 50]),
        ),
        max_size=25,
    ),
)
def test_max_entries_bound_holds(
    tmp_path: pathlib.Path, limit: int, fraction: float, ops: list[tuple[str, list[str], t.Any]]
) -> None:
    clock = FakeClock()
    with SQLiteBackend(
        tmp_path / "bound.sqlite3", timer=clock, max_entries=limit, cull_fraction=fraction
    ) as backend:
        backend.clear()
        for op, keys, ttl in ops:
            if op == "advance":
                clock.advance(ttl or 3)
                continue
            if op == "set":
                backend.set(keys[0], keys[0], ttl=ttl)
                written = keys[:1]
            elif op == "add":
                if not backend.add(keys[0], keys[0], ttl=ttl):
                    continue
                written = keys[:1]
            else:
                backend.set_many({key: key for key in keys}, ttl=ttl)
                written = keys
            assert _rows(backend) <= limit
            if len(written) <= limit:  # a cull never undoes the write that caused it
                assert backend.get_many(written) == {key: key for key in written}


# -- connections ----------------------------------------------------------------------------


def test_close_then_a_later_call_reopens(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    backend.set("k", "v")
    backend.close()
    assert backend.stats()["connections"] == 0
    assert backend.get("k") == "v"
    assert backend.stats()["connections"] == 1


def test_close_reaches_other_threads_connections(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    used, closed, done = threading.Event(), threading.Event(), threading.Event()
    seen: list[t.Any] = []

    def worker() -> None:
        backend.set("k", "from thread")
        used.set()
        assert closed.wait(10)
        seen.append(backend.get("k"))  # its connection was closed: this opens a new one
        done.set()
        assert closed.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    assert used.wait(10)
    backend.get("k")
    assert backend.stats()["connections"] == 2
    backend.close()
    assert backend.stats()["connections"] == 0
    closed.set()
    assert done.wait(10)
    thread.join(10)
    assert seen == ["from thread"]


def test_a_finished_thread_releases_its_connection(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    backend.set("k", 1)
    thread = threading.Thread(target=backend.get, args=("k",))
    thread.start()
    thread.join(10)
    assert wait_until(lambda: backend.stats()["connections"] == 1)


def test_a_collected_backend_closes_its_connections(db_path: str) -> None:
    backend = SQLiteBackend(db_path)
    backend.set("k", 1)
    conns = backend._conns
    assert len(conns.open) == 1
    del backend
    gc.collect()
    assert conns.open == {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make()
    backend.set("parent", 1)
    parent_conn = backend._connection()
    with warnings.catch_warnings():
        # Python 3.12+ warns when forking with other threads alive (left by other tests);
        # the child below only uses the backend, which is what this test is about.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork")
        pid = os.fork()
    if pid == 0:  # the child: leave only through os._exit
        code = 1
        try:
            backend.set("child", backend.get("parent") + 1)
            fresh = backend._connection()
            code = 0 if fresh is not parent_conn and backend._conns.pid == os.getpid() else 2
            backend.close()
        finally:
            os._exit(code)
    status: list[int] = []

    def reaped() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(code)
        return bool(status)

    assert wait_until(reaped, timeout=30)
    assert os.waitstatus_to_exitcode(status[0]) == 0
    assert backend._connection() is parent_conn  # the child did not close it
    assert backend.get("child") == 2


# -- configuration and errors ---------------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", "", "file::memory:?cache=shared"])
def test_an_unshareable_path_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match="MemoryBackend"):
        SQLiteBackend(path)


@pytest.mark.parametrize(
    "table", ["", "1abc", "with-dash", "a b", 'x"; DROP TABLE y; --', "sqlite_master", 7, None]
)
def test_a_bad_table_name_is_refused(db_path: str, table: t.Any) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBackend(db_path, table=table)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": -1},
        {"timeout": float("nan")},
        {"timeout": True},
        {"max_entries": 0},
        {"max_entries": 2.5},
        {"max_entries": True},
        {"cull_fraction": 0},
        {"cull_fraction": 1.5},
        {"default_ttl": "soon"},
    ],
    ids=repr,
)
def test_bad_numbers_are_refused(db_path: str, options: dict[str, t.Any]) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBackend(db_path, **options)


def test_default_path_honours_xdg_cache_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, backends: list[SQLiteBackend]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "tieredcache" / "default.sqlite3"
    assert default_path() == str(expected)
    backend = SQLiteBackend()
    backends.append(backend)
    assert backend.path == str(expected)
    backend.set("k", "v")
    assert expected.is_file()


def test_default_path_falls_back_to_home_cache(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    expected = str(tmp_path / ".cache" / "tieredcache" / "default.sqlite3")
    assert default_path() == expected
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says to ignore it
    assert default_path() == expected


def test_a_file_that_is_not_a_database(db_path: str, make: t.Callable[..., SQLiteBackend]) -> None:
    pathlib.Path(db_path).write_bytes(b"this is not a database file. " * 200)
    backend = make()
    with pytest.raises(BackendError) as info:
        backend.get("k")
    assert isinstance(info.value, BackendResponseError)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert info.value.backend == "sqlite"
    assert backend.stats()["errors"] == 1
    with pytest.raises(BackendResponseError):
        backend.set("k", "v")
    assert backend.stats()["connections"] == 0  # the failed opens were closed


def test_a_missing_directory_is_unavailable(
    tmp_path: pathlib.Path, make: t.Callable[..., SQLiteBackend]
) -> None:
    backend = make(path=tmp_path / "no" / "such" / "dir.sqlite3")
    with pytest.raises(BackendUnavailableError) as info:
        backend.set("k", "v")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)


def test_a_held_write_lock_times_out(make: t.Callable[..., SQLiteBackend]) -> None:
    backend = make(timeout=0.05)
    backend.set("k", "before")
    with _raw(backend.path) as raw:
        raw.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendTimeoutError) as info:
            backend.set("k", "blocked")
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert backend.get("k") == "before"  # WAL: readers do not wait for the writer
        raw.execute("ROLLBACK")
    assert backend.add("k2", 1) is True


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Python 3.11+")
def test_a_value_over_the_length_limit(make: t.Callable[..., SQLiteBackend]) -> None:
    from tieredcache.errors import ValueTooLargeError

    backend = make()
    backend._connection().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000)
    with pytest.raises(ValueTooLargeError):
        backend.set("big", b"x" * 5_000)
    assert backend.get("big") is None


def test_repr(make: t.Callable[..., SQLiteBackend], db_path: str) -> None:
    text = repr(make(table="things", max_entries=10))
    assert repr(db_path) in text
    assert "'things'" in text
    assert "max_entries=10" in text


# -- several processes ------------------------------------------------------------------------


def _subprocess(code: str, *args: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *sys.path]))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_two_processes_share_a_file(make: t.Callable[..., SQLiteBackend], db_path: str) -> None:
    backend = make(serializer=SignedSerializer("shared secret"))
    backend.set("from-parent", {"n": 1}, ttl=300)
    _subprocess(
        """
        import sys
        from tieredcache import SignedSerializer
        from tieredcache.backends.sqlite import SQLiteBackend

        with SQLiteBackend(sys.argv[1], serializer=SignedSerializer("shared secret")) as b:
            assert b.get("from-parent") == {"n": 1}, b.get("from-parent")
            b.set_many({f"k{i}": i for i in range(10)}, ttl=300)
            b.set("forever", ["x"], ttl=None)
        """,
        db_path,
    )
    assert backend.get_many([f"k{i}" for i in range(10)]) == {f"k{i}": i for i in range(10)}
    assert backend.get("forever") == ["x"]


def _add_worker(path: str, barrier: t.Any, results: t.Any, index: int) -> None:
    try:
        with SQLiteBackend(path) as backend:
            backend.has("warm-up")  # open the connection before the race starts
            barrier.wait(30)
            results.put((index, backend.add("contended", index)))
    except BaseException as exc:
        results.put((index, exc))


def _incr_worker(path: str, barrier: t.Any, results: t.Any, index: int) -> None:
    try:
        with SQLiteBackend(path) as backend:
            backend.has("warm-up")
            barrier.wait(30)
            for _ in range(50):
                backend.incr("counter")
            results.put((index, True))
    except BaseException as exc:
        results.put((index, exc))


def _race(target: t.Callable[..., None], path: str, count: int) -> dict[int, t.Any]:
    """Run ``target`` in ``count`` spawned processes released together; their results."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    processes = [ctx.Process(target=target, args=(path, barrier, results, i)) for i in range(count)]
    for process in processes:
        process.start()
    outcome: dict[int, t.Any] = {}
    try:
        for _ in range(count):
            index, value = results.get(timeout=60)
            outcome[index] = value
    except queue.Empty:
        pytest.fail(f"only {len(outcome)} of {count} processes reported")
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(5)
        results.close()
        results.join_thread()
    for value in outcome.values():
        if isinstance(value, BaseException):
            raise value
    assert all(process.exitcode == 0 for process in processes)
    return outcome


def test_concurrent_add_from_processes_has_one_winner(
    make: t.Callable[..., SQLiteBackend], db_path: str
) -> None:
    backend = make()
    backend.delete("contended")  # creates the file and the table before the race
    outcome = _race(_add_worker, db_path, 4)
    winners = [index for index, added in outcome.items() if added]
    assert len(winners) == 1
    assert backend.get("contended") == winners[0]


def test_concurrent_incr_from_processes_adds_up(
    make: t.Callable[..., SQLiteBackend], db_path: str
) -> None:
    backend = make()
    backend.set("counter", 0)
    _race(_incr_worker, db_path, 3)
    assert backend.get("counter") == 150
