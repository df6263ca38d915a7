"""The worker-process benchmark: does the tiered cache pay off in a real deployment?

Worker processes (1, 2, 4, 8 by default) share one Redis, which the run starts on a free
loopback port. Every worker runs the same cells in the same order, one after another: a
cell is one subject under one read/write mix. In a cell each worker does
:attr:`~tieredcache.bench.config.MultiprocessConfig.ops` operations on keys drawn Zipf
over a few thousand keys; a read that misses stores the value, as an application's cache
does: raw clients ``SET`` it, the tiers fill it as ``get_or_set`` does (set-if-absent at
L2, :meth:`~tieredcache.TieredCache.fill_entry`; the Django tier calls ``get_or_set``).
The first half of the operations is warm-up; then every worker waits at a barrier,
the parent reads the server's command counters (``INFO commandstats``), and the workers
run the second half, which is what is measured:

- throughput: the second halves' operations over the time from the first worker's start to
  the last worker's end, and its ratio to raw redis-py measured by the same workers;
- Redis commands per operation: the server's command counters over the measured window
  (``INFO`` itself excluded), divided by the operations;
- the L1 hit rate (reads answered by the process's own L1) and the hit rate (reads that
  found a value at all).

The tiers have a :class:`~tieredcache.redis.backplane.RedisBackplane`, so a write in one process
drops the key from the others' L1; the subjects are those of
:data:`~tieredcache.bench.subjects.WORKER_SUBJECTS`. Workers are spawned processes, bounded
in number by the configuration and in time by
:attr:`~tieredcache.bench.config.MultiprocessConfig.cell_seconds`: a worker stops by itself
when its operations are done, when a cell runs past its time, or when a barrier breaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import queue
import random
import secrets
import sys
import threading
import time
import typing as t

from tieredcache.bench.config import BenchConfig
from tieredcache.bench.config import Env
from tieredcache.bench.config import MultiprocessConfig
from tieredcache.bench.report import MultiprocessReport
from tieredcache.bench.run import describe_machine
from tieredcache.bench.subjects import WORKER_SUBJECTS
from tieredcache.bench.subjects import Subject
from tieredcache.bench.subjects import configure_django
from tieredcache.bench.subjects import missing_reason
from tieredcache.bench.workloads import make_value
from tieredcache.bench.workloads import zipf_keys

__all__ = ["BenchWorkerError", "command", "run_multiprocess"]

#: Seconds a barrier waits beyond a cell's own bound (set-up, warm-up, clean-up).
_SLACK = 30.0
#: Operations between two looks at the clock in a worker's loop.
_CHECK_EVERY = 256


class BenchWorkerError(RuntimeError):
    """A worker process failed or did not finish in time; the run is abandoned."""


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every worker of one pool runs (sent to the spawned processes)."""

    redis_url: str
    run_id: str
    processes: int
    cells: tuple[tuple[tuple[int, int], str], ...]  # ((reads, writes), subject)
    keys: int
    zipf_s: float
    size: int
    ops: int
    cell_seconds: float
    seed: int
    secret_key: str


def run_multiprocess(config: MultiprocessConfig) -> MultiprocessReport:
    """Run the worker-process benchmark of ``config`` and return its report.

    Starts a ``redis-server`` on loopback unless ``config`` names one (which must then
    serve nobody else during the run, since commands are counted on the server).

    :raises BenchWorkerError: a worker failed or overran its bound.
    """
    from tieredcache.testing.servers import RedisServer

    started = time.monotonic()
    names = list(config.subjects or WORKER_SUBJECTS)
    reasons = {name: missing_reason(WORKER_SUBJECTS[name][1]) for name in names}
    available = [name for name in names if reasons[name] is None]
    rows: list[dict[str, t.Any]] = []
    with contextlib.ExitStack() as stack:
        redis_url = config.redis_url
        if redis_url is None:
            redis_url = stack.enter_context(RedisServer()).url
        run_id = secrets.token_hex(4)
        for processes in config.processes:
            cells = []
            for i, mix in enumerate(config.mixes):
                # Alternate the subjects' order from one mix to the next.
                for name in available if i % 2 == 0 else available[::-1]:
                    cells.append((mix, name))
            job = _Job(
                redis_url=redis_url,
                run_id=run_id,
                processes=processes,
                cells=tuple(cells),
                keys=config.keys,
                zipf_s=config.zipf_s,
                size=config.size,
                ops=config.ops,
                cell_seconds=config.cell_seconds,
                seed=config.seed,
                secret_key=secrets.token_hex(16),
            )
            rows.extend(_run_pool(job, config.progress))
            for mix in config.mixes:
                for name in names:
                    if reasons[name] is not None:
                        rows.append(
                            {
                                **_cell_key(mix, processes, name),
                                "status": "skipped",
                                "detail": reasons[name],
                            }
                        )
        machine = describe_machine(redis_url)
    rows = _ordered(rows, config, names)
    _add_ratios(rows)
    return MultiprocessReport(
        machine=machine,
        config=dataclasses.asdict(config),
        rows=rows,
        seconds=time.monotonic() - started,
    )


def _cell_key(mix: tuple[int, int], processes: int, subject: str) -> dict[str, t.Any]:
    return {
        "mix": f"{mix[0]}/{mix[1]}",
        "reads": mix[0],
        "writes": mix[1],
        "processes": processes,
        "subject": subject,
    }


def _ordered(
    rows: list[dict[str, t.Any]], config: MultiprocessConfig, names: list[str]
) -> list[dict[str, t.Any]]:
    mixes = [f"{r}/{w}" for r, w in config.mixes]
    return sorted(
        rows,
        key=lambda r: (mixes.index(r["mix"]), r["processes"], names.index(r["subject"])),
    )


def _add_ratios(rows: list[dict[str, t.Any]]) -> None:
    found = {(r["mix"], r["processes"], r["subject"]): r for r in rows}
    for row in rows:
        if row["status"] != "ok":
            continue
        peers = [("ratio", "redis-py")]
        if row["subject"] == "tieredcache Django":
            peers.append(("django_redis_ratio", "django-redis"))
        for field, peer in peers:
            ref = found.get((row["mix"], row["processes"], peer))
            if ref is not None and ref["status"] == "ok" and ref["ops_per_s"]:
                row[field] = row["ops_per_s"] / ref["ops_per_s"]
            else:
                row[field] = None
                row[f"{field}_skipped"] = ref["detail"] if ref else f"{peer} did not run"
        row["reference"] = "redis-py"


def _run_pool(job: _Job, progress: bool) -> list[dict[str, t.Any]]:
    """Run every cell of ``job`` in ``job.processes`` spawned workers; one row per cell."""
    import redis

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(job.processes + 1)
    results: t.Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(job, index, barrier, results),
            name=f"tieredcache-bench-{index}",
        )
        for index in range(job.processes)
    ]
    wait = job.cell_seconds + _SLACK
    client = redis.Redis.from_url(job.redis_url, socket_timeout=10)
    received: list[dict[str, t.Any]] = []
    windows: list[dict[str, int]] = []
    try:
        for worker in workers:
            worker.start()
        for cell_index, (mix, name) in enumerate(job.cells):
            _wait(barrier, wait, received, results)  # every worker is warm
            before = _command_counts(client)
            _wait(barrier, wait, received, results)  # go
            _wait(barrier, wait, received, results)  # every worker is done
            after = _command_counts(client)
            windows.append({k: after.get(k, 0) - before.get(k, 0) for k in after})
            _wait(barrier, wait, received, results)  # the workers may clean up
            if progress:
                sys.stderr.write(
                    f"multiprocess: {job.processes} processes, {mix[0]}/{mix[1]}, {name}: "
                    f"cell {cell_index + 1}/{len(job.cells)}\n"
                )
        deadline = time.monotonic() + wait
        expected = job.processes * len(job.cells)
        while len(received) < expected:
            _receive(results, received, max(0.1, deadline - time.monotonic()))
    finally:
        client.close()
        barrier.abort()  # releases any worker still waiting, if the run failed
        for worker in workers:
            worker.join(timeout=wait)
            if worker.is_alive():  # past its bound: stop it (our own child, by its handle)
                worker.terminate()
                worker.join(timeout=5)
        results.close()
    return [_cell_row(job, i, windows[i], received) for i in range(len(job.cells))]


def _wait(barrier: t.Any, timeout: float, received: list[dict[str, t.Any]], results: t.Any) -> None:
    try:
        barrier.wait(timeout)
    except threading.BrokenBarrierError:
        # A worker that failed says why on the queue before breaking the barrier.
        with contextlib.suppress(BenchWorkerError):
            _receive(results, received, 1.0)
        failures = [r["error"] for r in received if "error" in r]
        raise BenchWorkerError(
            failures[0] if failures else f"a worker did not reach the barrier in {timeout:.0f} s"
        ) from None


def _receive(results: t.Any, received: list[dict[str, t.Any]], timeout: float) -> None:
    try:
        item = results.get(timeout=timeout)
    except queue.Empty:
        raise BenchWorkerError("a worker did not report its results in time") from None
    received.append(item)
    if "error" in item:
        raise BenchWorkerError(item["error"])


def _command_counts(client: t.Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name[len("cmdstat_") :]: int(figures["calls"])
        for name, figures in stats.items()
        if name.startswith("cmdstat_") and name != "cmdstat_info"
    }


def _cell_row(
    job: _Job, index: int, window: dict[str, int], received: list[dict[str, t.Any]]
) -> dict[str, t.Any]:
    mix, name = job.cells[index]
    parts = [r for r in received if r["cell"] == index]
    ops = sum(r["ops"] for r in parts)
    elapsed_ns = max(r["end_ns"] for r in parts) - min(r["start_ns"] for r in parts)
    reads = sum(r["reads"] for r in parts)
    l1 = [r["l1"] for r in parts if r["l1"] is not None]
    l1_reads = sum(reads for _, reads in l1)
    commands = sum(window.values())
    return {
        **_cell_key(mix, job.processes, name),
        "status": "ok",
        "ops": ops,
        "seconds": elapsed_ns / 1e9,
        "ops_per_s": ops / (elapsed_ns / 1e9) if elapsed_ns > 0 else 0.0,
        "commands_per_op": commands / ops if ops else 0.0,
        "commands": {k: v / ops for k, v in sorted(window.items()) if v and ops},
        "l1_hit_rate": sum(hits for hits, _ in l1) / l1_reads if l1 and l1_reads else None,
        "hit_rate": sum(r["found"] for r in parts) / reads if reads else None,
        "stopped_early": any(r["stopped_early"] for r in parts),
    }


# == the worker process =======================================================================


def _worker(job: _Job, index: int, barrier: t.Any, results: t.Any) -> None:
    """One worker: every cell of ``job`` in turn; results and failures go to ``results``."""
    try:
        env = Env(
            config=BenchConfig(),
            redis_url=job.redis_url,
            memcached=("127.0.0.1", 0),  # not used by the worker subjects
            run_id=job.run_id,
            rng=random.Random(job.seed + index),
        )
        value = make_value(job.size)
        wait = job.cell_seconds + _SLACK
        for cell, (mix, name) in enumerate(job.cells):
            if name.startswith(("tieredcache Django", "django")):
                configure_django(job.secret_key)
            factory, _ = WORKER_SUBJECTS[name]
            subject = factory(env, f"tcmp:{job.run_id}:{job.processes}:{cell}:")
            try:
                # Every subject of a mix sees the same operations in a given worker.
                plan = _plan(job, index, mix)
                half = len(plan) // 2
                deadline = time.monotonic() + job.cell_seconds
                _drive(subject, plan[:half], value, deadline)
                before = subject.l1_counts()
                barrier.wait(wait)
                barrier.wait(wait)
                start = time.monotonic_ns()
                ops, reads, found = _drive(subject, plan[half:], value, deadline)
                end = time.monotonic_ns()
                after = subject.l1_counts()
                barrier.wait(wait)
                barrier.wait(wait)
                subject.settle()
            finally:
                subject.close()
            l1 = None
            if before is not None and after is not None:
                l1 = (after[0] - before[0], after[1] - before[1])
            results.put(
                {
                    "cell": cell,
                    "worker": index,
                    "ops": ops,
                    "reads": reads,
                    "found": found,
                    "start_ns": start,
                    "end_ns": end,
                    "l1": l1,
                    "stopped_early": ops < len(plan) - half,
                }
            )
    except threading.BrokenBarrierError:
        pass  # the parent gave up on the run and says why
    except BaseException as exc:  # reported to the parent, which stops the run
        results.put({"error": f"worker {index}: {type(exc).__name__}: {exc}"[:500]})
        barrier.abort()


def _plan(job: _Job, index: int, mix: tuple[int, int]) -> list[tuple[bool, str]]:
    rng = random.Random(job.seed * 7919 + index * 101 + mix[1])
    writes = mix[1] / 100
    drawn = zipf_keys(rng, job.ops, job.keys, job.zipf_s)
    return [(rng.random() < writes, f"k{i}") for i in drawn]


def _drive(
    subject: Subject, plan: list[tuple[bool, str]], value: bytes, deadline: float
) -> tuple[int, int, int]:
    """Run ``plan`` (a read that misses sets the value); ``(operations, reads, found)``."""
    get, set_ = subject.get, subject.set
    fill = subject.fill or set_
    reads = found = done = 0
    clock = time.monotonic
    for done, (write, key) in enumerate(plan, 1):
        if write:
            set_(key, value)
        else:
            reads += 1
            if get(key) is None:
                fill(key, value)
            else:
                found += 1
        if done % _CHECK_EVERY == 0 and clock() > deadline:
            break
    return done, reads, found


def command(args: t.Any, out: t.TextIO) -> int:
    """``tieredcache bench --multiprocess``: run, print the Markdown report, write
    ``multiprocess.json``, ``multiprocess.md`` and (unless ``--no-plot``, with matplotlib)
    ``multiprocess.png`` into ``args.out``."""
    changes: dict[str, t.Any] = {
        "redis_url": args.redis_url,
        "progress": not args.no_progress,
    }
    if args.ops:
        changes["ops"] = args.ops
    if args.quick:
        config = MultiprocessConfig.quick_run(**changes)
    else:
        config = MultiprocessConfig(**changes)
    report = run_multiprocess(config)
    print(report.to_markdown(), file=out)
    for path in report.write(args.out, plot=not getattr(args, "no_plot", False)):
        print(f"wrote {path}", file=out)
    return 0
