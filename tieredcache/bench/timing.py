"""The timing harness: timed rounds of one subject's operations, on one thread or many.

Each sample is one operation, or for operations under a few microseconds the mean of a
small batch, timed with :func:`time.perf_counter_ns`. Threaded rounds run every thread
from one start until one deadline, and their throughput is all operations over the wall
time. :func:`busy_loop` keeps idle virtual CPUs awake for the length of a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import threading
import time
import typing as t

from tieredcache.bench.workloads import Case

__all__ = [
    "WARM",
    "Progress",
    "Series",
    "busy_loop",
    "percentile",
    "time_round",
    "time_threaded",
]

#: Untimed operations before each timed stretch.
WARM = 20


@dataclasses.dataclass
class Series:
    """The samples of one row."""

    samples: list[float] = dataclasses.field(default_factory=list)  # ns per op
    ops: int = 0
    wall_ns: int = 0


def time_round(case: Case, args: list[t.Any], series: Series) -> None:
    """Time ``case.op`` over ``args`` on this thread, adding the samples to ``series``."""
    op, prepare, batch, out = case.op, case.prepare, case.batch, series.samples
    clock = time.perf_counter_ns
    start = clock()
    if prepare is not None:
        for arg in args:
            prepare(arg)
            t0 = clock()
            op(arg)
            out.append(clock() - t0)
    elif batch == 1:
        for arg in args:
            t0 = clock()
            op(arg)
            out.append(clock() - t0)
    else:
        for i in range(0, len(args), batch):
            chunk = args[i : i + batch]
            t0 = clock()
            for arg in chunk:
                op(arg)
            out.append((clock() - t0) / len(chunk))
    series.wall_ns += clock() - start
    series.ops += len(args)


def time_threaded(case: Case, args: list[list[t.Any]], series: Series, duration_ns: int) -> None:
    """Every thread runs its own operations, in timed batches, from one start until one
    deadline; the round's throughput is all their operations over the wall time.

    A round lasts many GIL switch intervals (5 ms), so what is measured is the threads
    sharing the interpreter, not their start-up.
    """
    threads = len(args)
    barrier = threading.Barrier(threads + 1)
    partial = [Series() for _ in range(threads)]
    finished = [0] * threads
    deadline = [0]
    errors: list[BaseException] = []
    clock = time.perf_counter_ns

    def work(index: int) -> None:
        try:
            mine, out, op, batch = args[index], partial[index], case.op, case.batch
            # warm on the far end of the stretch, so the timed calls do not repeat these
            time_round(case, mine[-WARM:], Series())
            barrier.wait()
            end, i, count = deadline[0], 0, len(mine)
            while True:
                chunk = mine[i : i + batch]
                t0 = clock()
                for arg in chunk:
                    op(arg)
                t1 = clock()
                out.samples.append((t1 - t0) / len(chunk))
                out.ops += len(chunk)
                if t1 >= end:
                    break
                i = (i + batch) % count
            finished[index] = t1
        except BaseException as exc:  # reported on the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start = clock()
    deadline[0] = start + duration_ns
    barrier.wait()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    series.wall_ns += max(finished) - start
    for one in partial:
        series.samples.extend(one.samples)
        series.ops += one.ops


def percentile(sorted_samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` (0 to 1) of ``sorted_samples``; NaN when there are none."""
    if not sorted_samples:
        return float("nan")
    index = min(len(sorted_samples) - 1, round(fraction * (len(sorted_samples) - 1)))
    return sorted_samples[index]


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = time.monotonic() - self.started
        line = f"[{bar}] {frac:4.0%} {elapsed:5.0f}s  {label}"
        if self.tty:
            sys.stderr.write("\r" + line[:100].ljust(100))
        elif self.done == self.total or self.done % max(1, self.total // 20) == 0:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


@contextlib.contextmanager
def busy_loop() -> t.Iterator[None]:
    """A child process spinning at the lowest priority; stopped (by its PID) at the end."""
    code = "import os\nos.nice(19)\nwhile True:\n    pass\n"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        yield
    finally:
        child.kill()
        child.wait()
