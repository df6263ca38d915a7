"""The benchmark harness (``python -m tieredcache bench``): a tiny run against the session's
servers checks that every workload runs, that the report has the expected rows, ratios and
target verdicts, that a peer which is not installed is reported rather than fatal, and that
the command writes its files. Nothing here is timed: speed is what the benchmarks measure.
"""

from __future__ import annotations

import importlib
import json
import math
import typing as t

import pytest

from tieredcache import bench
from tieredcache.bench import TARGETS
from tieredcache.bench import WORKLOADS
from tieredcache.bench import BenchConfig
from tieredcache.cli import main

PROJECT = "tests.contrib.django_project.settings"


def configure_django() -> None:
    """Configure Django from the test project's settings, as the Django tests do."""
    from django.conf import settings

    if not settings.configured:
        project = importlib.import_module(PROJECT)
        settings.configure(**{n: getattr(project, n) for n in dir(project) if n.isupper()})


def tiny(redis_url: str, memcached: tuple[str, int], **changes: t.Any) -> BenchConfig:
    options: dict[str, t.Any] = {
        "sizes": (64,),
        "rounds": 2,
        "ops": 4,
        "threads": (1, 4, 16),
        "keys": 60,
        "memory_bytes": 8 * 1024,
        "round_ms": 2,
        "redis_url": redis_url,
        "memcached": memcached,
        "progress": False,
    }
    options.update(changes)
    return BenchConfig(**options)


def test_a_tiny_run_reports_every_row(
    redis_url: str, memcached_servers: list[tuple[str, int]], tmp_path: t.Any
) -> None:
    configure_django()
    report = bench.run(tiny(redis_url, memcached_servers[0]))
    check_every_workload_reports_every_subject(report)
    check_rows_have_positive_figures_and_ratios(report)
    check_targets_are_evaluated(report)
    check_report_files(report, tmp_path)


def check_every_workload_reports_every_subject(report: bench.Report) -> None:
    for workload in WORKLOADS:
        rows = [r for r in report.rows if r["workload"] == workload.id]
        assert {r["subject"] for r in rows} == set(workload.subjects), workload.id
        threads = {r["threads"] for r in rows}
        assert threads == ({1, 4, 16} if workload.threaded else {1}), workload.id
    assert [r["subject"] for r in report.rows if r["workload"] == "memory"] == ["tieredcache"]


def check_rows_have_positive_figures_and_ratios(report: bench.Report) -> None:
    ok = [r for r in report.rows if r["status"] == "ok"]
    for row in ok:
        if row["workload"] == "memory":
            assert row["measured_bytes"] > 0 and row["accounted_bytes"] <= row["bound_bytes"]
        else:
            assert row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"], row
            assert row["ops_per_s"] > 0, row
        assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
    for row in report.rows:
        if row["status"] != "ok":
            assert row["status"] == "missing" and row["detail"].startswith("not installed")
    # tieredcache and the peers it needs (core dependencies only) always run
    core = {"tieredcache", "redis-py", "pymemcache", "cachetools tier", "dict.get"}
    assert {r["subject"] for r in ok} >= core


def check_targets_are_evaluated(report: bench.Report) -> None:
    assert [v["id"] for v in report.targets] == [target.id for target in TARGETS]
    for verdict in report.targets:
        value = verdict["measured"]["64 B"]
        if verdict["id"].startswith("django") and value is None:
            continue  # Django not installed
        assert isinstance(value, float) and value > 0 and math.isfinite(value), verdict
        assert verdict["met"] in (True, False)


def check_report_files(report: bench.Report, tmp_path: t.Any) -> None:
    written = report.write(str(tmp_path), plot=False)
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["results.json", "results.md"]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["nproc"] >= 1 and data["machine"]["redis_server"]
    assert len(data["rows"]) == len(report.rows)
    text = (tmp_path / "results.md").read_text()
    assert "| target |" in text
    for workload in WORKLOADS:
        assert f"## {workload.title}" in text
    assert "## L1 memory under the mix" in text


def test_a_missing_peer_is_reported_not_fatal(
    redis_url: str, memcached_servers: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, _ = bench.SUBJECTS["cachetools tier"]
    monkeypatch.setitem(bench.SUBJECTS, "cachetools tier", (factory, ("no_such_peer_package",)))
    result = bench.run(tiny(redis_url, memcached_servers[0], only=("get-l1-hit",)))
    rows = {r["subject"]: r for r in result.rows}
    assert rows["cachetools tier"]["status"] == "missing"
    assert rows["cachetools tier"]["detail"] == "not installed: no_such_peer_package"
    # the other rows still have a ratio to the missing reference: none
    assert rows["tieredcache"]["status"] == "ok" and rows["tieredcache"]["ratio"] is None
    verdict = next(v for v in result.targets if v["id"] == "l1-vs-cachetools-tier")
    assert verdict["met"] is None


def test_command_prints_the_table_and_writes_files(
    redis_url: str,
    memcached_servers: list[tuple[str, int]],
    tmp_path: t.Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host, port = memcached_servers[0]
    code = main(
        [
            "bench",
            "--quick",
            "--only",
            "get-l1-hit",
            "--sizes",
            "64",
            "--rounds",
            "1",
            "--ops",
            "4",
            "--redis-url",
            redis_url,
            "--memcached",
            f"{host}:{port}",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| target |" in out and "## get, L1 hit" in out
    assert "p50 ÷ cachetools tier" in out
    assert (tmp_path / "results.json").exists() and (tmp_path / "results.md").exists()


def test_command_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit, match="--sizes"):
        main(["bench", "--sizes", "big"])
    with pytest.raises(SystemExit, match="HOST:PORT"):
        main(["bench", "--memcached", "nowhere"])
