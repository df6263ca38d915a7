"""The server installer, and what the test session does when the servers are missing."""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import pytest

from tieredcache.testing.install import NO_INSTALL_ENV
from tieredcache.testing.install import cannot_install_reason
from tieredcache.testing.install import ensure_installed
from tieredcache.testing.install import missing_binaries

ROOT = pathlib.Path(__file__).resolve().parents[1]

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the installer only runs as root"
)


def executable(path: pathlib.Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def bare_path(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A ``PATH`` of one empty directory (plus ``sh`` for the fake tools), for this test."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sh = "/bin/sh"
    (bindir / "sh").symlink_to(sh)
    monkeypatch.setenv("PATH", str(bindir))
    return bindir


def fake_apt_get(bindir: pathlib.Path, calls: pathlib.Path, *, provides: bool = True) -> None:
    """An ``apt-get`` that records its arguments and, on install, creates the binaries."""
    make = (
        f'for p in "$@"; do case "$p" in -*|*=*|install) ;; *) '
        f'printf "#!/bin/sh\\n" > "{bindir}/$p"; chmod +x "{bindir}/$p";; esac; done'
        if provides
        else ":"
    )
    executable(
        bindir / "apt-get",
        f"""\
        PATH=/usr/bin:/bin
        echo "apt-get $*" >> "{calls}"
        case " $* " in
          *" install "*) {make} ;;
        esac
        exit 0
        """,
    )
    executable(bindir / "service", f'echo "service $*" >> "{calls}"\n')


def test_missing_binaries_keeps_the_order(bare_path: pathlib.Path) -> None:
    executable(bare_path / "memcached", "exit 0\n")
    assert missing_binaries(["redis-server", "memcached", "nope"]) == ["redis-server", "nope"]


def test_nothing_missing_installs_nothing(bare_path: pathlib.Path) -> None:
    for name in ("redis-server", "memcached"):
        executable(bare_path / name, "exit 0\n")
    result = ensure_installed(env={NO_INSTALL_ENV: "1"})
    assert result.missing == () and result.installed == () and result.reason == ""


def test_the_environment_variable_turns_the_installer_off(bare_path: pathlib.Path) -> None:
    calls = bare_path.parent / "calls"
    fake_apt_get(bare_path, calls)
    assert cannot_install_reason({NO_INSTALL_ENV: "1"}) == f"{NO_INSTALL_ENV} is set"
    result = ensure_installed(["memcached"], env={NO_INSTALL_ENV: "1"})
    assert result.missing == ("memcached",)
    assert result.reason == f"{NO_INSTALL_ENV} is set"
    assert not calls.exists()


@needs_root
def test_without_apt_get_nothing_is_installed(bare_path: pathlib.Path) -> None:
    result = ensure_installed(["redis-server"], env={})
    assert result == type(result)(("redis-server",), reason="apt-get is not available")


def test_without_root_nothing_is_installed(
    bare_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = bare_path.parent / "calls"
    fake_apt_get(bare_path, calls)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = ensure_installed(["redis-server", "memcached"], env={})
    assert result.missing == ("redis-server", "memcached")
    assert result.reason == "installing them needs root"
    assert not calls.exists()


@needs_root
def test_root_with_apt_get_installs_the_missing_packages_once(bare_path: pathlib.Path) -> None:
    calls = bare_path.parent / "calls"
    log = bare_path.parent / "apt.log"
    lock = bare_path.parent / "lock"
    fake_apt_get(bare_path, calls)
    executable(bare_path / "memcached", "exit 0\n")
    result = ensure_installed(env={}, log_path=str(log), lock_path=str(lock))
    assert result.missing == () and result.installed == ("redis-server",)
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("apt-get -q ") and lines[0].endswith(" update")
    assert lines[1].startswith("apt-get -q ") and lines[1].endswith(
        " install -y --no-install-recommends redis-server"
    )
    assert lines[2:] == ["service redis-server stop"]
    assert f"$ {bare_path / 'apt-get'} -q" in log.read_text()
    # Installed now: a second call does nothing.
    assert ensure_installed(env={}, log_path=str(log), lock_path=str(lock)).installed == ()
    assert len(calls.read_text().splitlines()) == 3


@needs_root
def test_an_install_that_provides_nothing_says_where_the_log_is(bare_path: pathlib.Path) -> None:
    calls = bare_path.parent / "calls"
    log = bare_path.parent / "apt.log"
    fake_apt_get(bare_path, calls, provides=False)
    result = ensure_installed(
        ["memcached"], env={}, log_path=str(log), lock_path=str(bare_path.parent / "lock")
    )
    assert result.missing == ("memcached",)
    assert result.reason == f"apt-get did not provide them; see {log}"


def test_a_session_without_servers_says_so_once_and_skips_with_one_reason(
    tmp_path: pathlib.Path,
) -> None:
    # An empty PATH: no redis-server, no memcached, no apt-get.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TIEREDCACHE_") and key != "PYTEST_ADDOPTS"
    }
    env.update(PATH=str(bindir), **{NO_INSTALL_ENV: "1"})
    tests = [
        "tests/test_servers.py::test_redis_as_context_manager",
        "tests/test_servers.py::test_memcached_max_item_size",
        "tests/test_servers.py::test_redis_start_twice_is_an_error",
        "tests/test_servers.py::test_free_port_can_be_bound",
        "tests/test_backend_redis.py",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    said = [line for line in lines if "not installed" in line]
    assert len(said) == 2, result.stdout
    assert said[0].startswith("redis-server and memcached not installed (")
    assert said[0].endswith("tests that need them")
    assert said[1].startswith("SKIPPED [")
    assert "conftest.py" in said[1] and f"{NO_INSTALL_ENV} is set" in said[1]
    assert " passed, " in lines[-1] and "failed" not in lines[-1]
    assert "error" not in result.stdout.lower()
