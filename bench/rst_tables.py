"""Turn a benchmark ``results.json`` into the reStructuredText tables of the docs page.

``python bench/rst_tables.py bench/results/results.json`` prints them;
``--update docs/benchmarks.rst`` rewrites the part of that page between the lines
``.. results start`` and ``.. results end`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing as t

# Run from a checkout: import the tieredcache next to this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tieredcache.bench import WORKLOADS

START, END = ".. results start", ".. results end"


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _num(value: t.Any) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: t.Any) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _table(header: list[str], rows: list[list[str]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return [*lines, ""]


def render(data: dict[str, t.Any]) -> str:
    m = data["machine"]
    sizes = sorted({r["size"] for r in data["rows"]})
    out = [
        f"Machine: {m.get('cpu', '?')}, ``nproc`` = {m.get('nproc', '?')}; "
        f"{m.get('implementation', 'CPython')} {m.get('python', '?')} on "
        f"{m.get('platform', '?')}; redis-server {m.get('redis_server', '?')}, memcached "
        f"{m.get('memcached', '?')}; redis-py {m.get('redis-py', '?')} with hiredis "
        f"{m.get('hiredis', 'not installed')}, cachetools {m.get('cachetools', '?')}, "
        f"pymemcache {m.get('pymemcache', '?')}, Django {m.get('django', '?')}, django-redis "
        f"{m.get('django-redis', 'not installed')}. The run took {data['seconds']:.0f} s.",
        "",
        "Targets",
        "~~~~~~~",
        "",
    ]
    rows = []
    for v in data["targets"]:
        cells = [_ratio(v["measured"].get(_size(s))) for s in sizes]
        bound = ("<= " if v["at_most"] else ">= ") + f"{v['bound']:.3g}x"
        holds = {True: "yes", False: "**no**", None: "-"}[v["met"]]
        rows.append([v["text"], *cells, bound, holds])
    out += _table(
        ["target", *[_size(s) for s in sizes], "bound", "holds"],
        rows,
        " ".join(["50"] + ["12"] * len(sizes) + ["12", "8"]),
    )
    for workload in WORKLOADS:
        found = [r for r in data["rows"] if r["workload"] == workload.id]
        if not found:
            continue
        out += [workload.title, "~" * len(workload.title), ""]
        if workload.reference == "self":
            ratio_head = "ops/s ÷ same on 1 thread"
        elif workload.metric == "throughput":
            ratio_head = f"ops/s ÷ {workload.reference}"
        else:
            ratio_head = f"p50 ÷ {workload.reference}"
        header = ["value", "subject"]
        header += ["threads"] if workload.threaded else []
        header += ["p50 µs", "p99 µs", "ops/s", ratio_head]
        body = []
        for r in found:
            lead = [_size(r["size"]), r["subject"]] + (
                [str(r["threads"])] if workload.threaded else []
            )
            if r["status"] != "ok":
                body.append([*lead, r["detail"], "", "", ""])
                continue
            body.append(
                [
                    *lead,
                    _num(r["p50_us"]),
                    _num(r["p99_us"]),
                    _num(r["ops_per_s"]),
                    _ratio(r.get("ratio")),
                ]
            )
        widths = "8 30 " + ("8 " if workload.threaded else "") + "10 10 12 16"
        out += _table(header, body, widths)
    memory = [r for r in data["rows"] if r["workload"] == "memory"]
    if memory:
        out += ["L1 memory under the mix", "~" * 23, ""]
        out += _table(
            ["value", "max_bytes", "accounted", "measured", "entries", "measured ÷ bound"],
            [
                [
                    _size(r["size"]),
                    f"{r['bound_bytes']:,}",
                    f"{r['accounted_bytes']:,}",
                    f"{r['measured_bytes']:,}",
                    f"{r['entries']:,}",
                    _ratio(r["ratio"]),
                ]
                for r in memory
            ],
            "10 14 14 14 10 14",
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results.json written by `tieredcache bench`")
    parser.add_argument("--update", metavar="RST", help="rewrite the results part of this page")
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as fh:
        text = render(json.load(fh))
    if not args.update:
        print(text)
        return 0
    with open(args.update, encoding="utf-8") as fh:
        page = fh.read()
    head, start, rest = page.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{args.update} has no {START!r} ... {END!r} section")
    with open(args.update, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{START}\n\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
