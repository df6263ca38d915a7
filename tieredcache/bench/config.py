"""What a benchmark run measures and where: :class:`BenchConfig` for the single-process
workloads, :class:`MultiprocessConfig` for the worker-process benchmark, and :class:`Env`,
the settings and server addresses the subjects of a run connect to.
"""

from __future__ import annotations

import dataclasses
import random
import typing as t

__all__ = ["TTL", "BenchConfig", "Env", "MultiprocessConfig"]

#: The TTL, in seconds, of every value the benchmarks write.
TTL = 300


@dataclasses.dataclass
class BenchConfig:
    """What to run and where.

    :param quick: a short run (under a minute): fewer rounds and operations.
    :param sizes: value sizes in bytes (a workload may pin its own, see
        :attr:`~tieredcache.bench.workloads.Workload.sizes`).
    :param rounds: alternating rounds per workload (each subject times one batch per round).
    :param ops: timed operations per subject per round (fast operations run more).
    :param threads: thread counts of the threaded workloads.
    :param round_ms: how long a round of a threaded workload lasts, in milliseconds.
    :param only: run only the workloads whose id or group starts with one of these.
    :param redis_url: an existing Redis to use (``None``: start one on loopback).
    :param memcached: an existing memcached ``(host, port)`` (``None``: start one).
    :param progress: draw a progress bar on stderr.
    :param keep_awake: run a lowest-priority busy loop in a child process for the whole
        run, so that idle virtual CPUs do not have to be woken by the hypervisor for every
        round trip (on such machines a loopback round trip otherwise measures the wake-up).
    :param keys: how many keys the Zipf mix spreads over (the hot set of the single-key
        workloads is a fifth of it, at most 1000).
    :param wide_keys: how many distinct keys the uniform mix and the Django rows use: more
        than any memo inside a subject (the Django backend remembers 4096 made keys), so
        that no row is measured on a key set small enough to live in such a memo.
    :param memory_bytes: the L1 ``max_bytes`` of the memory workload (``None``: 256 KiB
        for small values, 1 MiB for large ones).
    :param seed: the seed of every random draw (keys, orders, read/write choices).
    """

    quick: bool = False
    sizes: tuple[int, ...] = (64, 4096)
    rounds: int = 15
    ops: int = 300
    threads: tuple[int, ...] = (1, 4, 16)
    round_ms: int = 100
    only: tuple[str, ...] = ()
    redis_url: str | None = None
    memcached: tuple[str, int] | None = None
    progress: bool = True
    keep_awake: bool = False
    keys: int = 5000
    wide_keys: int = 10_000
    memory_bytes: int | None = None
    seed: int = 20240611

    @classmethod
    def quick_run(cls, **changes: t.Any) -> BenchConfig:
        """The settings of ``--quick``."""
        return cls(**{"quick": True, "rounds": 5, "ops": 80, "round_ms": 40, **changes})


@dataclasses.dataclass
class Env:
    """Where the subjects connect, and the run's settings."""

    config: BenchConfig
    redis_url: str
    memcached: tuple[str, int]
    run_id: str
    rng: random.Random


@dataclasses.dataclass
class MultiprocessConfig:
    """The worker-process benchmark: processes sharing one Redis.

    Each cell of the table is one subject under one read/write mix with a number of worker
    processes; every worker does ``ops`` operations on keys drawn from a Zipf distribution,
    the first half as warm-up, and the cell's throughput is the second halves' operations
    over the time from the first worker's start of its second half to the last one's end.

    :param quick: a short run for tests: few operations, one and two processes.
    :param processes: worker counts.
    :param mixes: ``(reads, writes)`` percentages.
    :param keys: distinct keys; drawn Zipf(``zipf_s``).
    :param zipf_s: the exponent of the key distribution.
    :param size: value size in bytes.
    :param ops: operations per worker and cell (half warm-up, half measured).
    :param subjects: the subjects to run (``()``: all of them).
    :param cell_seconds: the most seconds a worker spends on one cell; a worker past it
        stops early and reports what it did.
    :param redis_url: an existing Redis to use (``None``: start one on loopback). Commands
        per operation are read from the server's counters, so the server must not serve
        anyone else during the run.
    :param progress: print a line per cell on stderr.
    :param seed: the seed of the key and mix draws.
    """

    quick: bool = False
    processes: tuple[int, ...] = (1, 2, 4, 8)
    mixes: tuple[tuple[int, int], ...] = ((99, 1), (90, 10), (50, 50))
    keys: int = 5000
    zipf_s: float = 1.1
    size: int = 256
    ops: int = 60000
    subjects: tuple[str, ...] = ()
    cell_seconds: float = 60.0
    redis_url: str | None = None
    progress: bool = True
    seed: int = 20240611

    @classmethod
    def quick_run(cls, **changes: t.Any) -> MultiprocessConfig:
        """The settings of ``--multiprocess --quick``: seconds, not minutes."""
        defaults: dict[str, t.Any] = {
            "quick": True,
            "processes": (1, 2),
            "ops": 200,
            "cell_seconds": 20.0,
        }
        return cls(**{**defaults, **changes})
