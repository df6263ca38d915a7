"""The ``tieredcache`` command: version, help, and a demo that leaves shared stores alone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import typing as t

import pytest

import tieredcache
from tieredcache.backends.memcached_servers import listed_keys
from tieredcache.backends.sqlite import SQLiteBackend
from tieredcache.cli import main


def run_command(
    *args: str, env: t.Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tieredcache", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=None if env is None else dict(env),
        check=False,
    )


def demo(location: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["demo", "--l2", location]) == 0
    out = capsys.readouterr().out
    assert "loader ran 1 time(s)" in out and "L2 holds the raced value: True" in out
    return out


def test_version_prints_the_version() -> None:
    result = run_command("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"tieredcache {tieredcache.__version__}\n"


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["bench", "--help"]])
def test_help_is_plain_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tieredcache")
    for markup in ("``", ":mod:", ":class:", ":func:", "**"):
        assert markup not in out


def test_the_demo_needs_no_server(tmp_path: t.Any) -> None:
    # No redis-server or memcached on PATH, and nothing listening matters: the embedded
    # defaults are a memory L1 in front of a SQLite file in a temporary directory.
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_command("demo", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "L1 = <MemoryBackend" in result.stdout
    assert "L2 = <SQLiteBackend" in result.stdout
    assert "get_many of 100 keys" in result.stdout and "(100 found)" in result.stdout


def test_the_demo_keeps_what_others_wrote_on_redis(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.set("someone:else", b"theirs")
        client.set("tieredcache-demo:user:1", b"an earlier run's")
        before = set(client.keys("*"))
        demo(redis_url, capsys)
        assert client.get("someone:else") == b"theirs"
        assert client.get("tieredcache-demo:user:1") == b"an earlier run's"
        assert set(client.keys("*")) == before  # and nothing of the demo's is left


def memcached_keys(address: tuple[str, int]) -> set[bytes]:
    """The keys the server holds, from its own listing."""
    from pymemcache.client.base import Client

    client = Client(address, connect_timeout=5, timeout=5)
    try:
        return set(listed_keys(client))
    finally:
        client.close()


def test_the_demo_keeps_what_others_wrote_on_memcached(
    memcached_servers: list[tuple[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    from pymemcache.client.base import Client

    host, port = memcached_servers[0]
    client = Client((host, port), connect_timeout=5, timeout=5)
    try:
        client.set("someone:else", b"theirs")
        client.set("tieredcache-demo:user:1", b"an earlier run's")
        before = memcached_keys((host, port))
        demo(f"memcached://{host}:{port}", capsys)
        assert client.get("someone:else") == b"theirs"
        assert client.get("tieredcache-demo:user:1") == b"an earlier run's"
    finally:
        client.close()
    # Nothing of the demo's is left (keys written by other tests' background work may come
    # and go meanwhile: only the demo's namespace is checked).
    left = memcached_keys((host, port)) - before
    assert not [key for key in left if b"demo" in key], left


def test_the_demo_keeps_what_others_wrote_in_a_sqlite_file(
    tmp_path: t.Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "shared.sqlite3")
    theirs = SQLiteBackend(path)
    try:
        theirs.set("someone:else", "theirs", ttl=None)
    finally:
        theirs.close()
    demo(f"sqlite://{path}", capsys)
    theirs = SQLiteBackend(path)
    try:
        assert theirs.get("someone:else") == "theirs"
    finally:
        theirs.close()
    with sqlite3.connect(path) as conn:
        (rows,) = conn.execute("SELECT COUNT(*) FROM tieredcache").fetchone()
    conn.close()
    assert rows == 1
