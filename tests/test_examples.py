"""The Django example site runs: its checks pass, its views answer, ``runserver`` serves it.

Each test runs the site in a process of its own (``manage.py``), so the site's settings never
meet the Django configuration of ``tests/contrib``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import typing as t
import urllib.error
import urllib.request

import pytest

from tieredcache.testing.servers import free_port

MANAGE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "django_site" / "manage.py"

#: Seconds a child process may take before the test fails instead of hanging.
PATIENCE = 60.0

# Runs inside ``manage.py shell``: Django's test client against the site's views.
CLIENT_SCRIPT = textwrap.dedent(
    """
    import json
    from django.test import Client

    client = Client()
    out = {}
    for name, url in [("index1", "/"), ("index2", "/"), ("square1", "/square/12/"),
                      ("square2", "/square/12/"), ("clock1", "/clock/"), ("clock2", "/clock/")]:
        response = client.get(url)
        out[name] = [response.status_code, json.loads(response.content)]
    print("RESULT " + json.dumps(out))
    """
)


def site_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    env.pop("TIEREDCACHE_LOCATION", None)
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), **extra)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )


def client_results(env: dict[str, str]) -> dict[str, t.Any]:
    result = manage(env, "shell", "-c", CLIENT_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return t.cast("dict[str, t.Any]", json.loads(line[len("RESULT ") :]))


def test_the_site_passes_its_checks(tmp_path: pathlib.Path) -> None:
    result = manage(site_env(tmp_path), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_views_use_the_cache_on_the_embedded_defaults(tmp_path: pathlib.Path) -> None:
    out = client_results(site_env(tmp_path))
    assert all(status == 200 for status, _ in out.values())
    assert out["index2"][1]["visits"] == out["index1"][1]["visits"] + 1
    assert out["square1"][1] == {**out["square1"][1], "square": 144, "cached": False}
    assert out["square2"][1] == {**out["square2"][1], "square": 144, "cached": True}
    # cache_page: the second request gets the first response.
    assert out["clock2"][1] == out["clock1"][1]
    # The embedded default L2 is a SQLite file under the cache directory.
    assert list((tmp_path / "cache" / "tieredcache").glob("*.sqlite3"))


def test_two_processes_share_redis(tmp_path: pathlib.Path, redis_url: str) -> None:
    env = site_env(tmp_path, TIEREDCACHE_LOCATION=redis_url)
    first = client_results(env)
    second = client_results(env)
    assert first["square1"][1]["cached"] is False
    assert second["square1"][1]["cached"] is True  # computed by the other process
    assert second["index1"][1]["visits"] == first["index2"][1]["visits"] + 1


def test_runserver_serves_the_site(tmp_path: pathlib.Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=site_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    body = json.loads(response.read())
                    break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling for the server to listen, bounded by the deadline
        assert body["visits"] == 1
        assert body["try"] == ["/square/12/", "/clock/"]
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    if proc.returncode not in (0, -15):
        pytest.fail(f"runserver exited with {proc.returncode}")
