"""The ``tieredcache`` command: ``python -m tieredcache demo [--l2 URL]`` and
``python -m tieredcache bench [--quick]``.

``demo`` builds a two-tier cache (memory in front of the embedded SQLite store, or of the
store named by ``--l2``), runs the main operations through it and prints what each tier
did, so a new user sees the library work in a few seconds. It needs no server by default.
Pointed at a shared store, it writes only keys under a namespace of its own, new on every
run, and deletes exactly those keys at the end: it never clears or flushes the store.

``bench`` measures tieredcache against its peers in one run and prints the table of
ratios (see :mod:`tieredcache.bench`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import typing as t
import uuid

from tieredcache.backends.base import Backend
from tieredcache.backends.memory import MemoryBackend
from tieredcache.errors import TieredCacheError
from tieredcache.policies.write import RaceWrite
from tieredcache.tiered import TieredCache

__all__ = ["DESCRIPTION", "main"]

#: The first line of ``tieredcache --help``: plain text, unlike the module docstring.
DESCRIPTION = "tieredcache: a multi-level cache for Python. Try it with 'tieredcache demo'."


def _l2_from(location: str | None, tmpdir: str) -> Backend:
    from tieredcache.config import build_l2
    from tieredcache.config import parse_location
    from tieredcache.options import CacheOptions

    parsed = parse_location(location or f"sqlite://{os.path.join(tmpdir, 'demo.sqlite3')}")
    prefix = "tieredcache-demo:" if parsed.kind in ("redis", "memcached") else ""
    return build_l2(parsed, CacheOptions(l2_prefix=prefix, socket_timeout=2.0))


def _timed(fn: t.Callable[[], t.Any]) -> tuple[t.Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - start) * 1e6


def demo(location: str | None, out: t.TextIO) -> int:
    """Run the demo against ``location`` (``None``: the embedded SQLite store)."""
    with tempfile.TemporaryDirectory(prefix="tieredcache-demo-") as tmpdir:
        try:
            l2 = _l2_from(location, tmpdir)
        except TieredCacheError as exc:
            print(f"cannot configure the L2 store: {exc}", file=out)
            return 2
        cache = TieredCache(MemoryBackend(maxsize=1000), l2, l1_ttl=60)
        # Keys of this run only, so that a shared store keeps everything else it holds.
        namespace = f"demo-{uuid.uuid4().hex[:12]}:"
        written: list[str] = []
        try:
            return _run(cache, l2, out, namespace, written)
        except TieredCacheError as exc:
            print(f"\nthe demo failed: {type(exc).__name__}: {exc}", file=out)
            return 1
        finally:
            try:
                cache.delete_many(written)
            except TieredCacheError as exc:
                print(f"could not delete the demo's keys under {namespace!r}: {exc}", file=out)
            finally:
                cache.close()


def _run(cache: TieredCache, l2: Backend, out: t.TextIO, namespace: str, written: list[str]) -> int:
    def say(line: str = "") -> None:
        print(line, file=out)

    def key(name: str) -> str:
        full = namespace + name
        written.append(full)
        return full

    say(f"tieredcache demo: L1 = {cache.l1!r}")
    say(f"                  L2 = {l2!r}")
    say(f"                  keys under {namespace!r}, deleted at the end")
    say()
    user = key("user:1")
    _, us = _timed(lambda: cache.set(user, {"name": "Ada", "langs": ["en", "fr"]}, ttl=300))
    say(f"set user:1 (both tiers)                  {us:9.1f} us")
    value, us = _timed(lambda: cache.get(user))
    say(f"get user:1                               {us:9.1f} us  (L1 hit) -> {value!r}")
    cache.l1.clear()  # the demo's own in-process L1
    value, us = _timed(lambda: cache.get(user))
    say(f"get after L1 is emptied                  {us:9.1f} us  (L2 hit, refills L1)")
    _, us = _timed(lambda: cache.get(user))
    say(f"get again                                {us:9.1f} us  (L1 hit)")
    items = [key(f"item:{i}") for i in range(100)]
    cache.set_many({item: i * i for i, item in enumerate(items)}, ttl=300)
    many, us = _timed(lambda: cache.get_many(items))
    say(f"get_many of 100 keys                     {us:9.1f} us  ({len(many)} found)")
    hits = key("hits")
    cache.set(hits, 0, ttl=300)
    for _ in range(5):
        cache.incr(hits)
    say(f"incr x5 -> {cache.get(hits)}")
    calls: list[str] = []

    def build_report(text: str) -> t.Callable[[], str]:
        def load() -> str:
            calls.append(text)
            return text

        return load

    report = key("report")
    loaded = cache.get_or_set(report, build_report("computed once"), ttl=60)
    cache.get_or_set(report, build_report("computed twice"), ttl=60)
    say(f"get_or_set twice -> {loaded!r}, loader ran {len(calls)} time(s)")
    say(f"delete user:1 -> {cache.delete(user)}; get -> {cache.get(user)!r}")
    race = key("race")
    racing = TieredCache(cache.l1, l2, write=RaceWrite())  # the same layers: cache closes them
    racing.set(race, "warm-up: starts the worker threads", ttl=60)
    _, us = _timed(lambda: racing.set(race, "returns at the first success", ttl=60))
    racing.drain(10)
    say(f"RaceWrite set                            {us:9.1f} us  (L2 completes in the background)")
    say(f"after drain(), L2 holds the raced value: {l2.get(race) is not None}")
    figures = cache.stats()
    say()
    say(
        f"stats: hits={figures['hits']} misses={figures['misses']} l1_hits={figures['l1_hits']} "
        f"l2_hits={figures['l2_hits']} refills={figures['refills']}"
    )
    return 0


def main(argv: t.Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tieredcache`` and the ``tieredcache`` script."""
    from tieredcache import __version__

    parser = argparse.ArgumentParser(prog="tieredcache", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tieredcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser(
        "demo",
        help="show the tiers working (memory + SQLite by default)",
        description="Run the main operations through a memory L1 in front of an L2 and print "
        "what each tier did. The L2 is an embedded SQLite file unless --l2 names a store; the "
        "demo writes only keys of its own there and deletes them at the end.",
    )
    run_demo.add_argument(
        "--l2",
        metavar="URL",
        help="the L2 store: redis://host:port/db, memcached://host:port or sqlite:///path "
        "(default: an embedded SQLite file)",
    )
    run_bench = commands.add_parser(
        "bench",
        help="benchmark tieredcache against its peers (starts its own redis-server and memcached)",
        description="Run the benchmark workloads against tieredcache and its installed "
        "peers in one process, print the Markdown report with ratios, and write it as "
        "JSON, Markdown and PNG.",
    )
    run_bench.add_argument(
        "--quick", action="store_true", help="a short run (under a minute on two cores)"
    )
    run_bench.add_argument(
        "--out",
        metavar="DIR",
        default="bench-results",
        help="where to write results.json, results.md and results.png (default: %(default)s)",
    )
    run_bench.add_argument(
        "--only",
        metavar="ID",
        action="append",
        default=[],
        help="run only the workloads whose id starts with ID (repeatable; e.g. get-l1, "
        "django, memory)",
    )
    run_bench.add_argument(
        "--sizes",
        metavar="BYTES",
        default="64,4096",
        help="value sizes, comma-separated (default: %(default)s)",
    )
    run_bench.add_argument("--rounds", type=int, help="alternating rounds per workload")
    run_bench.add_argument("--ops", type=int, help="timed operations per subject and round")
    run_bench.add_argument(
        "--redis-url", metavar="URL", help="use this Redis instead of starting one"
    )
    run_bench.add_argument(
        "--memcached", metavar="HOST:PORT", help="use this memcached instead of starting one"
    )
    run_bench.add_argument(
        "--keep-awake",
        action="store_true",
        help="keep the CPUs awake with a lowest-priority busy loop (on virtual machines whose "
        "idle CPUs are slow to wake, round trips otherwise measure the wake-up)",
    )
    run_bench.add_argument(
        "--multiprocess",
        action="store_true",
        help="worker processes sharing one Redis (1 to 8; --quick: 1 and 2), written as "
        "multiprocess.json and multiprocess.md",
    )
    run_bench.add_argument(
        "--no-plot", action="store_true", help="do not draw results.png (multiprocess.png)"
    )
    run_bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(args, sys.stdout)
    return demo(args.l2, sys.stdout)


def bench(args: argparse.Namespace, out: t.TextIO) -> int:
    """Run ``tieredcache bench`` with parsed arguments; print the report, write the files."""
    from tieredcache.bench import BenchConfig
    from tieredcache.bench import run
    from tieredcache.bench.multiprocess import command

    if args.multiprocess:
        return command(args, out)
    try:
        sizes = tuple(int(size) for size in args.sizes.split(",") if size.strip())
    except ValueError:
        raise SystemExit(
            f"--sizes must be integers separated by commas, not {args.sizes!r}"
        ) from None
    memcached = None
    if args.memcached:
        host, _, port = args.memcached.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit(f"--memcached must be HOST:PORT, not {args.memcached!r}")
        memcached = (host, int(port))
    changes: dict[str, t.Any] = {
        "sizes": sizes,
        "only": tuple(args.only),
        "redis_url": args.redis_url,
        "memcached": memcached,
        "progress": not args.no_progress,
        "keep_awake": args.keep_awake,
    }
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.ops:
        changes["ops"] = args.ops
    config = BenchConfig.quick_run(**changes) if args.quick else BenchConfig(**changes)
    report = run(config)
    print(report.to_markdown(), file=out)
    for path in report.write(args.out, plot=not args.no_plot):
        print(f"wrote {path}", file=out)
    return 0
