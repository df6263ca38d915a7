"""
Benchmarks
==========

``python -m tieredcache bench`` runs the same workloads against tieredcache and against its
peers, in one process and one run, and reports each row's latency and throughput and its
ratio to a peer measured alongside it:

- a plain dict read inside a function, and a ``cachetools.TTLCache`` behind a
  ``threading.Lock`` (an in-process cache alone);
- raw ``redis-py`` and raw ``pymemcache`` (values pickled by the caller);
- two hand-written tiers in front of redis-py: a ``cachetools.TTLCache`` behind a lock, and
  a plain dict of ``(value, expires_at)`` read without a lock;
- Django's ``LocMemCache`` and ``RedisCache``, and ``django-redis``.

``python -m tieredcache bench --multiprocess`` runs worker processes sharing one Redis
(:mod:`tieredcache.bench.multiprocess`): tieredcache with a Redis backplane against raw
redis-py and django-redis, with Redis commands per operation and L1 hit rates.

A peer that is not installed is reported as skipped, with the reason; only the core
dependencies and the ``redis-server`` and ``memcached`` binaries are needed (the run
starts its own servers on loopback unless given addresses).

Absolute times depend on the machine and on whatever else it runs; ratios measured in the
same run are what carry from one machine to another.

The package, by concern: :mod:`~tieredcache.bench.config` (what to run),
:mod:`~tieredcache.bench.subjects` (the implementations under test),
:mod:`~tieredcache.bench.workloads` (key distributions and operation mixes; the targets),
:mod:`~tieredcache.bench.timing` (the timing harness), :mod:`~tieredcache.bench.run` (the
single-process run), :mod:`~tieredcache.bench.multiprocess` (the worker-process run) and
:mod:`~tieredcache.bench.report` (JSON, Markdown, reST and PNG).
"""

from __future__ import annotations

from tieredcache.bench.config import BenchConfig
from tieredcache.bench.config import MultiprocessConfig
from tieredcache.bench.multiprocess import run_multiprocess
from tieredcache.bench.report import MultiprocessReport
from tieredcache.bench.report import Report
from tieredcache.bench.run import run
from tieredcache.bench.subjects import SUBJECTS
from tieredcache.bench.subjects import WORKER_SUBJECTS
from tieredcache.bench.workloads import TARGETS
from tieredcache.bench.workloads import WORKLOADS
from tieredcache.bench.workloads import Target
from tieredcache.bench.workloads import Workload

__all__ = [
    "SUBJECTS",
    "TARGETS",
    "WORKER_SUBJECTS",
    "WORKLOADS",
    "BenchConfig",
    "MultiprocessConfig",
    "MultiprocessReport",
    "Report",
    "Target",
    "Workload",
    "run",
    "run_multiprocess",
]
