"""The benchmark harness (``python -m tieredcache bench``): a tiny run against the session's
servers checks that every workload runs, that the report has the expected rows, ratios and
target verdicts, that a peer which is not installed is reported as skipped with the reason
(whether or not the ``[bench]`` extra is installed), and that the command writes its files;
a quick ``--multiprocess`` run checks the worker-process table. Nothing here is timed:
speed is what the benchmarks measure.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import random
import sys
import typing as t

import pytest

from tieredcache import bench
from tieredcache.bench import TARGETS
from tieredcache.bench import WORKLOADS
from tieredcache.bench import BenchConfig
from tieredcache.bench.config import Env
from tieredcache.bench.subjects import missing_reason
from tieredcache.bench.workloads import build_case
from tieredcache.bench.workloads import shuffled_passes
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
        "wide_keys": 120,
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
    skipped = {(r["workload"], r["subject"]): r["detail"] for r in report.rows if r not in ok}
    for row in ok:
        if row["workload"] == "memory":
            assert row["measured_bytes"] > 0 and row["accounted_bytes"] <= row["bound_bytes"]
            assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
            continue
        assert row["p50_us"] > 0 and row["p99_us"] >= row["p50_us"], row
        assert row["ops_per_s"] > 0, row
        reference = (row["workload"], row["reference"])
        if reference in skipped:
            # no ratio to a peer that did not run, and the row says why
            assert row["ratio"] is None and row["ratio_skipped"] == skipped[reference], row
        else:
            assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
    for row in report.rows:
        # a row is skipped exactly when its peer's package is missing, and says which
        reason = missing_reason(bench.SUBJECTS[row["subject"]][1])
        if row["workload"] == "memory" or reason is None:
            assert row["status"] == "ok", row
        else:
            assert row["status"] == "skipped" and row["detail"] == reason, row
            assert reason.endswith(" not installed")
    # tieredcache and the peers it needs (core dependencies only) always run
    core = {"tieredcache", "redis-py", "pymemcache", "cachetools tier", "dict.get"}
    assert {r["subject"] for r in ok} >= core


def check_targets_are_evaluated(report: bench.Report) -> None:
    assert [v["id"] for v in report.targets] == [target.id for target in TARGETS]
    for verdict in report.targets:
        value = verdict["measured"]["64 B"]
        if value is None:  # a peer of the target is not installed: the verdict says which
            assert verdict["met"] is None and verdict["detail"].endswith("not installed")
            continue
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
    assert rows["cachetools tier"]["status"] == "skipped"
    assert rows["cachetools tier"]["detail"] == "no_such_peer_package not installed"
    # the other rows have no ratio to the missing reference, and say why
    assert rows["tieredcache"]["status"] == "ok" and rows["tieredcache"]["ratio"] is None
    assert rows["tieredcache"]["ratio_skipped"] == "no_such_peer_package not installed"
    verdict = next(v for v in result.targets if v["id"] == "l1-vs-cachetools-tier")
    assert verdict["met"] is None
    assert verdict["detail"] == "no_such_peer_package not installed"
    assert "skipped: no_such_peer_package not installed" in result.to_markdown()


def test_without_django_redis_its_rows_are_skipped(
    redis_url: str, memcached_servers: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a clone without the [bench] extra, whether or not this environment has it.
    configure_django()
    monkeypatch.setitem(sys.modules, "django_redis", None)
    result = bench.run(tiny(redis_url, memcached_servers[0], only=("django",)))
    assert {r["workload"] for r in result.rows} == {w.id for w in WORKLOADS if "django" in w.id}
    for row in result.rows:
        if row["subject"] == "django-redis":
            assert row["status"] == "skipped" and row["detail"] == "django-redis not installed"
        else:
            assert row["status"] == "ok", row
        if row["status"] == "ok" and row["reference"] == "django-redis":
            assert row["ratio"] is None and row["ratio_skipped"] == "django-redis not installed"
    verdict = next(v for v in result.targets if v["id"] == "django-vs-django-redis")
    assert verdict["met"] is None and verdict["detail"] == "django-redis not installed"


def test_with_django_redis_the_django_rows_have_ratios(
    redis_url: str, memcached_servers: list[tuple[str, int]]
) -> None:
    pytest.importorskip("django_redis", reason="django-redis is in the [bench] extra")
    configure_django()
    result = bench.run(tiny(redis_url, memcached_servers[0], only=("django-l2",)))
    rows = {r["subject"]: r for r in result.rows}
    assert rows["django-redis"]["status"] == "ok" and rows["django-redis"]["ratio"] == 1.0
    ratio = rows["tieredcache Django"]["ratio"]
    assert isinstance(ratio, float) and ratio > 0


def test_django_rows_and_the_uniform_mix_use_more_keys_than_any_memo() -> None:
    # Django's backend remembers 4096 made keys; the Django rows read 10,000 distinct keys
    # in shuffled order, so no timed read can be served by such a memo.
    config = BenchConfig()
    env = Env(config, "redis://unused", ("127.0.0.1", 0), "test", random.Random(0))
    for workload_id in ("django-get", "django-l2", "django-set"):
        workload = next(w for w in WORKLOADS if w.id == workload_id)
        factory, _ = bench.SUBJECTS["dict.get"]  # in-process, so the plan alone is checked
        case = build_case(workload, factory(env, "p:"), env, 64, config.ops)
        assert len(set(case.args)) >= 10_000, workload_id
        assert len(set(case.args[: config.wide_keys])) == config.wide_keys
    uniform = next(w for w in WORKLOADS if w.id == "uniform")
    assert uniform.distribution == "shuffled" and uniform.wide and uniform.sizes == (64,)
    order = shuffled_passes(random.Random(1), 25, 10)
    assert len(order) == 30 and all(sorted(order[i : i + 10]) == list(range(10)) for i in (0, 10))


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


def test_multiprocess_quick_run_reports_every_cell(
    tmp_path: t.Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Starts its own redis-server: commands per operation are counted on the server.
    code = main(["bench", "--multiprocess", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert "## 90% reads / 10% writes" in capsys.readouterr().out
    data = json.loads((tmp_path / "multiprocess.json").read_text())
    assert data["kind"] == "multiprocess" and (tmp_path / "multiprocess.md").exists()
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra draws the plot
        assert (tmp_path / "multiprocess.png").read_bytes().startswith(b"\x89PNG")
    rows = data["rows"]
    cells = {(r["mix"], r["processes"], r["subject"]) for r in rows}
    subjects = ["tieredcache", "redis-py", "tieredcache Django", "django-redis"]
    mixes = ("99/1", "90/10", "50/50")
    assert cells == {(m, p, s) for m in mixes for p in (1, 2) for s in subjects}
    for row in rows:
        reason = missing_reason(bench.WORKER_SUBJECTS[row["subject"]][1])
        if reason is not None:
            assert row["status"] == "skipped" and row["detail"] == reason
            continue
        assert row["status"] == "ok" and row["ops"] > 0 and row["ops_per_s"] > 0, row
        assert isinstance(row["ratio"], float) and row["ratio"] > 0, row
        assert row["reference"] == "redis-py"
        assert row["commands_per_op"] > 0 and row["commands"], row
        assert 0 <= row["hit_rate"] <= 1, row
        if row["subject"].startswith("tieredcache"):
            assert 0 <= row["l1_hit_rate"] <= row["hit_rate"], row
        else:
            assert row["l1_hit_rate"] is None, row  # no L1
        if row["subject"] == "redis-py":
            assert row["ratio"] == 1.0
        if row["subject"] == "tieredcache Django":
            if importlib.util.find_spec("django_redis") is None:
                assert row["django_redis_ratio_skipped"] == "django-redis not installed"
            else:
                assert row["django_redis_ratio"] > 0


def test_command_refuses_bad_arguments() -> None:
    with pytest.raises(SystemExit, match="--sizes"):
        main(["bench", "--sizes", "big"])
    with pytest.raises(SystemExit, match="HOST:PORT"):
        main(["bench", "--memcached", "nowhere"])
