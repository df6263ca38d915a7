"""Running the single-process workloads: :func:`run` starts the servers, runs every
selected workload for every value size, subjects taking turns round after round in
alternating order, and returns the :class:`~tieredcache.bench.report.Report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import os
import platform
import random
import secrets
import time
import tracemalloc
import typing as t

from tieredcache.bench.config import BenchConfig
from tieredcache.bench.config import Env
from tieredcache.bench.report import Report
from tieredcache.bench.report import evaluate_targets
from tieredcache.bench.report import size_label
from tieredcache.bench.subjects import SUBJECTS
from tieredcache.bench.subjects import TieredSubject
from tieredcache.bench.subjects import missing_reason
from tieredcache.bench.timing import WARM
from tieredcache.bench.timing import Progress
from tieredcache.bench.timing import Series
from tieredcache.bench.timing import busy_loop
from tieredcache.bench.timing import percentile
from tieredcache.bench.timing import time_round
from tieredcache.bench.timing import time_threaded
from tieredcache.bench.workloads import TARGETS
from tieredcache.bench.workloads import WORKLOADS
from tieredcache.bench.workloads import Case
from tieredcache.bench.workloads import Workload
from tieredcache.bench.workloads import build_case
from tieredcache.bench.workloads import make_value
from tieredcache.bench.workloads import stretch
from tieredcache.bench.workloads import zipf_keys

__all__ = ["describe_machine", "run", "start_servers"]


def run(config: BenchConfig) -> Report:
    """Run the benchmarks of ``config`` and return the report (nothing is written).

    Starts ``redis-server`` and ``memcached`` on loopback unless ``config`` gives servers;
    they are stopped before returning.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_url, memcached = start_servers(config, stack)
        if config.keep_awake:
            stack.enter_context(busy_loop())
        env = Env(
            config=config,
            redis_url=redis_url,
            memcached=memcached,
            run_id=secrets.token_hex(4),
            rng=random.Random(config.seed),
        )
        workloads = _selected(config)
        with_memory = not config.only or any("memory".startswith(p) for p in config.only)
        steps = sum(len(_sizes(w, config)) for w in workloads) * config.rounds
        steps += len(config.sizes) if with_memory else 0
        progress = Progress(steps, config.progress)
        rows: list[dict[str, t.Any]] = []
        try:
            for workload in workloads:
                for size in _sizes(workload, config):
                    rows.extend(_run_workload(workload, env, size, progress))
            if with_memory:
                for size in config.sizes:
                    rows.extend(_memory_rows(env, size, progress))
        finally:
            progress.close()
        machine = describe_machine(redis_url, memcached)
    return Report(
        machine=machine,
        config=dataclasses.asdict(config),
        rows=rows,
        targets=evaluate_targets(TARGETS, rows),
        seconds=time.monotonic() - started,
    )


def _sizes(workload: Workload, config: BenchConfig) -> tuple[int, ...]:
    return workload.sizes if workload.sizes is not None else config.sizes


def _selected(config: BenchConfig) -> list[Workload]:
    if not config.only:
        return list(WORKLOADS)
    return [w for w in WORKLOADS if any(w.id.startswith(p) for p in config.only)]


def _run_workload(
    workload: Workload, env: Env, size: int, progress: Progress
) -> list[dict[str, t.Any]]:
    config = env.config
    ops = max(workload.batch, int(config.ops * workload.ops_factor))
    thread_counts = config.threads if workload.threaded else (1,)
    rows: list[dict[str, t.Any]] = []
    cases: dict[str, Case] = {}
    for name in workload.subjects:
        factory, packages = SUBJECTS[name]
        base = {"workload": workload.id, "size": size, "subject": name}
        reason = missing_reason(packages)
        if reason is not None:
            for threads in thread_counts:
                rows.append({**base, "threads": threads, "status": "skipped", "detail": reason})
            continue
        prefix = f"tcb:{env.run_id}:{workload.id}:{size}:{len(cases)}:"
        try:
            subject = factory(env, prefix)
            cases[name] = build_case(workload, subject, env, size, ops)
        except Exception as exc:
            for threads in thread_counts:
                detail = f"{type(exc).__name__}: {exc}"[:200]
                rows.append({**base, "threads": threads, "status": "error", "detail": detail})
    series = {(name, n): Series() for name in cases for n in thread_counts}
    try:
        for case in cases.values():  # warm-up: connections, code paths, the L1
            warm = max(case.batch, min(len(case.args), ops) // 4)
            time_round(case, stretch(case.args, warm, -warm), Series())
            case.subject.settle()
        names = list(cases)
        for round_no in range(config.rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            gc.collect()
            for name in order:
                case = cases[name]
                for threads in thread_counts:
                    gc.disable()
                    try:
                        _time_one(workload, case, series[name, threads], ops, threads, round_no)
                    finally:
                        gc.enable()
                    case.subject.settle()
            progress.step(f"{workload.id} {size_label(size)} round {round_no + 1}/{config.rounds}")
    finally:
        for case in cases.values():
            with contextlib.suppress(Exception):
                case.subject.close()
    for name in cases:
        for threads in thread_counts:
            s = series[name, threads]
            ordered = sorted(s.samples)
            rows.append(
                {
                    "workload": workload.id,
                    "size": size,
                    "subject": name,
                    "threads": threads,
                    "status": "ok",
                    "p50_us": percentile(ordered, 0.5) / 1000,
                    "p99_us": percentile(ordered, 0.99) / 1000,
                    "ops_per_s": s.ops / (s.wall_ns / 1e9) if s.wall_ns else 0.0,
                    "samples": len(ordered),
                }
            )
    _add_ratios(workload, rows)
    return rows


def _time_one(
    workload: Workload, case: Case, series: Series, ops: int, threads: int, round_no: int
) -> None:
    config_ms = case.subject.env.config.round_ms
    if workload.threaded:
        # The threads deal the plan among themselves from where the subject's previous
        # threaded round stopped (whatever its thread count), so that together they walk
        # it in order: a round that started over would re-read the keys the last one left
        # in L1, and the uniform mix would measure a key set smaller than the L1.
        plan, cursor = case.args, case.cursor
        length = max(ops, len(plan) // threads)
        per_thread = [
            [plan[(cursor + i + k * threads) % len(plan)] for k in range(length)]
            for i in range(threads)
        ]
        done = series.ops
        time_threaded(case, per_thread, series, config_ms * 1_000_000)
        case.cursor = cursor + series.ops - done
    else:
        start = round_no * ops
        # Warm the caches on the operations just before this round's, so that no timed
        # operation repeats a warm-up one.
        time_round(case, stretch(case.args, WARM, start - WARM), Series())
        time_round(case, stretch(case.args, ops, start), series)


def _add_ratios(workload: Workload, rows: list[dict[str, t.Any]]) -> None:
    by_key = {(r["subject"], r["threads"]): r for r in rows if r["status"] == "ok"}
    skipped = {(r["subject"], r["threads"]): r["detail"] for r in rows if r["status"] != "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        if workload.reference == "self":
            key = (row["subject"], 1)
            row["reference"] = f"{row['subject']} on 1 thread"
        else:
            key = (workload.reference, row["threads"])
            row["reference"] = workload.reference
        ref = by_key.get(key)
        row["ratio_of"] = "ops/s" if workload.metric == "throughput" else "p50"
        if ref is None:
            row["ratio"] = None
            row["ratio_skipped"] = skipped.get(key, "the reference did not run")
        elif workload.metric == "throughput":
            row["ratio"] = row["ops_per_s"] / ref["ops_per_s"] if ref["ops_per_s"] else None
        else:
            row["ratio"] = row["p50_us"] / ref["p50_us"] if ref["p50_us"] else None


def _memory_rows(env: Env, size: int, progress: Progress) -> list[dict[str, t.Any]]:
    """Run the mix through a tier whose L1 has ``max_bytes``, then weigh what L1 holds."""
    from tieredcache.backends.memory import MemoryBackend

    bound = env.config.memory_bytes or (256 * 1024 if size <= 1024 else 1024 * 1024)
    prefix = f"tcb:{env.run_id}:memory:{size}:"
    subject = TieredSubject(env, prefix, l1_maxsize=1_000_000, l1_max_bytes=bound)
    try:
        rng = random.Random(env.config.seed)
        capacity = bound // (size + 200)  # roughly how many entries fit
        universe = 4 * capacity
        keys = [f"z{i}" for i in range(universe)]
        for i, key in enumerate(keys):  # L2 holds every key; L1 overflows many times over
            subject.set(key, make_value(size, i))
        ops = max(3 * capacity, env.config.ops * 10)
        for i, k in enumerate(zipf_keys(rng, ops, universe)):
            if rng.random() < 0.1:
                subject.set(keys[k], make_value(size, i))
            else:
                subject.get(keys[k])
        accounted = subject.l1.currsize
        # What L1 holds, read through its public API (a read does not change membership).
        held = [(key, entry) for key in keys if (entry := subject.l1.get_entry(key)) is not None]
        # Weigh a twin of the L1 built from fresh objects (keys, values, entries), so that
        # nothing outside it shares what is measured.
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            twin = MemoryBackend(1_000_000, max_bytes=bound)
            for key, entry in held:
                fresh = entry.replace(value=bytes(bytearray(entry.value)))
                twin.set_entry((key + ".")[:-1], fresh)
            del fresh
            gc.collect()
            weighed = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        entries = len(twin)
    finally:
        subject.close()
    progress.step(f"memory {size_label(size)}")
    return [
        {
            "workload": "memory",
            "size": size,
            "subject": "tieredcache",
            "threads": 1,
            "status": "ok",
            "bound_bytes": bound,
            "accounted_bytes": accounted,
            "measured_bytes": weighed,
            "entries": entries,
            "ratio": weighed / bound,
            "reference": "max_bytes",
            "ratio_of": "bytes",
        }
    ]


def describe_machine(redis_url: str, memcached: tuple[str, int] | None = None) -> dict[str, t.Any]:
    """Cores, CPU model, Python, server and package versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, t.Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    for label, module in (
        ("tieredcache", "tieredcache"),
        ("redis-py", "redis"),
        ("hiredis", "hiredis"),
        ("cachetools", "cachetools"),
        ("pymemcache", "pymemcache"),
        ("django", "django"),
        ("django-redis", "django_redis"),
    ):
        with contextlib.suppress(Exception):
            info[label] = getattr(importlib.import_module(module), "__version__", "?")
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        info["redis_server"] = client.info("server").get("redis_version")
        client.close()
    if memcached is None:
        return info
    with contextlib.suppress(Exception):
        from pymemcache.client.base import Client

        mc = Client(memcached, connect_timeout=2, timeout=2)
        info["memcached"] = mc.version().decode()
        mc.close()
    return info


def start_servers(config: BenchConfig, stack: contextlib.ExitStack) -> tuple[str, tuple[str, int]]:
    """The Redis URL and memcached address of ``config``, starting (on ``stack``) a
    loopback server for each one it does not give."""
    from tieredcache.testing.servers import MemcachedServer
    from tieredcache.testing.servers import RedisServer

    redis_url = config.redis_url
    if redis_url is None:
        server = stack.enter_context(RedisServer())
        redis_url = server.url
    memcached = config.memcached
    if memcached is None:
        mc = stack.enter_context(MemcachedServer())
        memcached = mc.address
    return redis_url, memcached
