"""The reports: a finished run as JSON, Markdown, reStructuredText tables (for the docs
page) and a PNG plot (with matplotlib).

:class:`Report` holds the single-process workloads and the verdicts on :data:`TARGETS`;
:class:`MultiprocessReport` the worker-process table. Rows whose peer is not installed
carry ``status: "skipped"`` and the reason; a row whose reference peer was skipped has no
ratio and says why in ``ratio_skipped``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing as t

from tieredcache.bench.plotting import save_figure
from tieredcache.bench.workloads import WORKLOADS
from tieredcache.bench.workloads import Target

__all__ = [
    "MultiprocessReport",
    "Report",
    "evaluate_targets",
    "multiprocess_markdown",
    "multiprocess_rst",
    "ratio_cell",
    "rst_tables",
    "size_label",
    "workloads_markdown",
]


@dataclasses.dataclass
class Report:
    """A finished run: machine, settings, rows and target verdicts."""

    machine: dict[str, t.Any]
    config: dict[str, t.Any]
    rows: list[dict[str, t.Any]]
    targets: list[dict[str, t.Any]]
    seconds: float

    def to_json(self) -> str:
        """The report as JSON (what ``results.json`` holds)."""
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)

    def to_markdown(self) -> str:
        """The report as Markdown: targets, then a table per workload."""
        return workloads_markdown(dataclasses.asdict(self))

    def to_rst(self) -> str:
        """The tables of the docs page (see :func:`rst_tables`)."""
        return rst_tables(dataclasses.asdict(self))

    def write(self, directory: str, *, plot: bool = True) -> list[str]:
        """Write ``results.json``, ``results.md`` and (with matplotlib) ``results.png``."""
        os.makedirs(directory, exist_ok=True)
        written = _write_texts(directory, "results", self.to_json(), self.to_markdown())
        if plot:
            path = os.path.join(directory, "results.png")
            if _plot(self, path):
                written.append(path)
        return written


@dataclasses.dataclass
class MultiprocessReport:
    """A finished worker-process run: machine, settings and one row per cell."""

    machine: dict[str, t.Any]
    config: dict[str, t.Any]
    rows: list[dict[str, t.Any]]
    seconds: float
    kind: str = "multiprocess"

    def to_json(self) -> str:
        """The report as JSON (what ``multiprocess.json`` holds)."""
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)

    def to_markdown(self) -> str:
        """The report as Markdown: one table per read/write mix."""
        return multiprocess_markdown(dataclasses.asdict(self))

    def to_rst(self) -> str:
        """The tables of the docs page."""
        return multiprocess_rst(dataclasses.asdict(self))

    def write(self, directory: str, *, plot: bool = True) -> list[str]:
        """Write ``multiprocess.json``, ``multiprocess.md`` and (with matplotlib)
        ``multiprocess.png``."""
        from tieredcache.bench.multiprocess_plot import plot_multiprocess

        written = _write_texts(directory, "multiprocess", self.to_json(), self.to_markdown())
        path = os.path.join(directory, "multiprocess.png")
        if plot and plot_multiprocess(dataclasses.asdict(self), path):
            written.append(path)
        return written


def size_label(size: int) -> str:
    """``64 B``, ``4 KiB``."""
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _write_texts(directory: str, stem: str, json_text: str, markdown: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, text in ((f"{stem}.json", json_text), (f"{stem}.md", markdown)):
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written


def evaluate_targets(
    targets: t.Sequence[Target], rows: list[dict[str, t.Any]]
) -> list[dict[str, t.Any]]:
    """Each target's measured ratio per value size and whether it holds (``None``: not
    measured, and ``detail`` says why, e.g. ``"django-redis not installed"``)."""
    found = {
        (r["workload"], r["size"], r["subject"], r["threads"]): r
        for r in rows
        if r["status"] == "ok"
    }
    skipped = {(r["workload"], r["subject"]): r["detail"] for r in rows if r["status"] != "ok"}
    sizes = sorted({r["size"] for r in rows})
    verdicts = []
    for target in targets:
        measured: dict[str, float | None] = {}
        for size in sizes:
            value: float | None = None
            if target.measure == "memory":
                row = found.get((target.workload, size, target.numerator, 1))
                value = row["ratio"] if row else None
            else:
                num = found.get((target.workload, size, target.numerator, target.threads))
                den = found.get((target.workload, size, target.denominator, 1))
                if target.measure == "p50" and num and den and den["p50_us"]:
                    value = num["p50_us"] / den["p50_us"]
                elif target.measure == "ops" and num and den and den["ops_per_s"]:
                    value = num["ops_per_s"] / den["ops_per_s"]
            measured[size_label(size)] = value
        values = [v for v in measured.values() if v is not None]
        met: bool | None = None
        if values:
            met = all(v <= target.bound if target.at_most else v >= target.bound for v in values)
        reasons = sorted(
            {
                skipped[target.workload, name]
                for name in (target.numerator, target.denominator)
                if (target.workload, name) in skipped
            }
        )
        verdicts.append(
            {
                "id": target.id,
                "text": target.text,
                "bound": target.bound,
                "at_most": target.at_most,
                "measured": measured,
                "met": met,
                "detail": "; ".join(reasons) if reasons else None,
            }
        )
    return verdicts


def _fmt(value: t.Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        if value >= 100:
            return f"{value:.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def _ratio_text(value: t.Any) -> str:
    return "-" if value is None else f"{value:.3g}x"


def ratio_cell(row: t.Mapping[str, t.Any], field: str = "ratio") -> str:
    """A row's ratio as a table cell: ``0.84x``, or why there is none."""
    value = row.get(field)
    if value is None and row.get(f"{field}_skipped"):
        return f"skipped: {row[f'{field}_skipped']}"
    return _ratio_text(value)


def _holds(verdict: t.Mapping[str, t.Any]) -> str:
    if verdict["met"] is None and verdict.get("detail"):
        return f"skipped: {verdict['detail']}"
    return {True: "yes", False: "**no**", None: "-"}[verdict["met"]]


def _ratio_head(workload: t.Any) -> str:
    if workload.reference == "self":
        return "ops/s ÷ same on 1 thread"
    if workload.metric == "throughput":
        return f"ops/s ÷ {workload.reference}"
    return f"p50 ÷ {workload.reference}"


def _workload_cells(workload: t.Any, rows: list[dict[str, t.Any]]) -> list[list[str]]:
    """The cells of a workload's table: value, subject, [threads], p50, p99, ops/s, ratio."""
    body = []
    for r in rows:
        lead = [size_label(r["size"]), r["subject"]]
        lead += [str(r["threads"])] if workload.threaded else []
        if r["status"] != "ok":
            body.append([*lead, f"skipped: {r['detail']}", "", "", ""])
            continue
        body.append(
            [*lead, _fmt(r["p50_us"]), _fmt(r["p99_us"]), _fmt(r["ops_per_s"]), ratio_cell(r)]
        )
    return body


def _memory_cells(rows: list[dict[str, t.Any]]) -> list[list[str]]:
    return [
        [
            size_label(r["size"]),
            f"{r['bound_bytes']:,}",
            f"{r['accounted_bytes']:,}",
            f"{r['measured_bytes']:,}",
            f"{r['entries']:,}",
            _ratio_text(r["ratio"]),
        ]
        for r in rows
    ]


_MEMORY_HEAD = ["value", "max_bytes", "accounted", "measured", "entries", "measured ÷ bound"]
_MEMORY_TITLE = "L1 memory under the mix"


def _target_cells(data: t.Mapping[str, t.Any]) -> tuple[list[str], list[list[str]]]:
    sizes = sorted({r["size"] for r in data["rows"]})
    head = ["target", *[size_label(s) for s in sizes], "bound", "holds"]
    body = []
    for v in data["targets"]:
        cells = [_ratio_text(v["measured"].get(size_label(s))) for s in sizes]
        bound = ("<= " if v["at_most"] else ">= ") + f"{v['bound']:.3g}x"
        body.append([v["text"], *cells, bound, _holds(v)])
    return head, body


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def workloads_markdown(data: t.Mapping[str, t.Any]) -> str:
    """A :class:`Report` (as a dict) in Markdown."""
    m = data["machine"]
    lines = [
        "# tieredcache benchmarks",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} cores; Python "
        f"{m.get('python', '?')}; redis-server {m.get('redis_server', '?')}; memcached "
        f"{m.get('memcached', '?')}; redis-py {m.get('redis-py', '?')} (hiredis "
        f"{m.get('hiredis', 'not installed')}). Run took {data['seconds']:.0f} s"
        f"{' (--quick)' if data['config'].get('quick') else ''}.",
        "",
        "## Targets",
        "",
        *_md_table(*_target_cells(data)),
    ]
    for workload in WORKLOADS:
        rows = [r for r in data["rows"] if r["workload"] == workload.id]
        if rows:
            head = ["value", "subject", *(["threads"] if workload.threaded else [])]
            head += ["p50 µs", "p99 µs", "ops/s", _ratio_head(workload)]
            lines += ["", f"## {workload.title}", ""]
            lines += _md_table(head, _workload_cells(workload, rows))
    memory = [r for r in data["rows"] if r["workload"] == "memory"]
    if memory:
        lines += ["", f"## {_MEMORY_TITLE}", "", *_md_table(_MEMORY_HEAD, _memory_cells(memory))]
    lines.append("")
    return "\n".join(lines)


def _rst_table(head: list[str], body: list[list[str]], widths: str) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {widths}", ""]
    for row in [head, *body]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" if cell else "     -" for cell in row[1:])
    return [*lines, ""]


def _rst_machine(data: t.Mapping[str, t.Any]) -> str:
    m = data["machine"]
    return (
        f"Machine: {m.get('cpu', '?')}, ``nproc`` = {m.get('nproc', '?')}; "
        f"{m.get('implementation', 'CPython')} {m.get('python', '?')} on "
        f"{m.get('platform', '?')}; redis-server {m.get('redis_server', '?')}, memcached "
        f"{m.get('memcached', '?')}; redis-py {m.get('redis-py', '?')} with hiredis "
        f"{m.get('hiredis', 'not installed')}, cachetools {m.get('cachetools', '?')}, "
        f"pymemcache {m.get('pymemcache', '?')}, Django {m.get('django', '?')}, django-redis "
        f"{m.get('django-redis', 'not installed')}. The run took {data['seconds']:.0f} s."
    )


def rst_tables(data: t.Mapping[str, t.Any]) -> str:
    """A results dict (``results.json`` of either kind) as the reST tables of the docs."""
    if data.get("kind") == "multiprocess":
        return multiprocess_rst(data)
    head, body = _target_cells(data)
    sizes = len(head) - 3
    out = [_rst_machine(data), "", "Targets", "~~~~~~~", ""]
    out += _rst_table(head, body, " ".join(["50"] + ["12"] * sizes + ["12", "8"]))
    for workload in WORKLOADS:
        rows = [r for r in data["rows"] if r["workload"] == workload.id]
        if not rows:
            continue
        head = ["value", "subject", *(["threads"] if workload.threaded else [])]
        head += ["p50 µs", "p99 µs", "ops/s", _ratio_head(workload)]
        widths = "8 30 " + ("8 " if workload.threaded else "") + "10 10 12 16"
        out += [workload.title, "~" * len(workload.title), ""]
        out += _rst_table(head, _workload_cells(workload, rows), widths)
    memory = [r for r in data["rows"] if r["workload"] == "memory"]
    if memory:
        out += [_MEMORY_TITLE, "~" * len(_MEMORY_TITLE), ""]
        out += _rst_table(_MEMORY_HEAD, _memory_cells(memory), "10 14 14 14 10 14")
    return "\n".join(out)


_MP_HEAD = [
    "processes",
    "subject",
    "ops/s",
    "÷ redis-py",
    "÷ django-redis",
    "Redis commands/op",
    "L1 hit rate",
    "hit rate",
]


def _rate(value: t.Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def _multiprocess_cells(rows: list[dict[str, t.Any]]) -> list[list[str]]:
    body = []
    for r in rows:
        lead = [str(r["processes"]), r["subject"]]
        if r["status"] != "ok":
            body.append([*lead, f"skipped: {r['detail']}", "", "", "", "", ""])
            continue
        body.append(
            [
                *lead,
                _fmt(r["ops_per_s"]),
                ratio_cell(r),
                ratio_cell(r, "django_redis_ratio") if "django_redis_ratio" in r else "",
                f"{r['commands_per_op']:.2f}",
                _rate(r["l1_hit_rate"]),
                _rate(r["hit_rate"]),
            ]
        )
    return body


def _mixes(data: t.Mapping[str, t.Any]) -> list[tuple[str, list[dict[str, t.Any]]]]:
    order: list[str] = []
    for row in data["rows"]:
        if row["mix"] not in order:
            order.append(row["mix"])
    return [(mix, [r for r in data["rows"] if r["mix"] == mix]) for mix in order]


def _mix_title(mix: str) -> str:
    reads, writes = mix.split("/")
    return f"{reads}% reads / {writes}% writes"


def multiprocess_markdown(data: t.Mapping[str, t.Any]) -> str:
    """A :class:`MultiprocessReport` (as a dict) in Markdown."""
    m, c = data["machine"], data["config"]
    lines = [
        "# tieredcache in worker processes sharing one Redis",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('nproc', '?')} cores; Python "
        f"{m.get('python', '?')}; redis-server {m.get('redis_server', '?')}. Keys Zipf("
        f"{c['zipf_s']}) over {c['keys']:,}, {c['size']} B values, {c['ops']:,} operations "
        f"per worker and cell (the second half measured). Run took {data['seconds']:.0f} s"
        f"{' (--quick)' if c.get('quick') else ''}.",
    ]
    for mix, rows in _mixes(data):
        lines += ["", f"## {_mix_title(mix)}", "", *_md_table(_MP_HEAD, _multiprocess_cells(rows))]
    lines.append("")
    return "\n".join(lines)


def multiprocess_rst(data: t.Mapping[str, t.Any]) -> str:
    """A :class:`MultiprocessReport` (as a dict) as the reST tables of the docs."""
    m, c = data["machine"], data["config"]
    out = [
        f"Machine: {m.get('cpu', '?')}, ``nproc`` = {m.get('nproc', '?')}; "
        f"{m.get('implementation', 'CPython')} {m.get('python', '?')}; redis-server "
        f"{m.get('redis_server', '?')}; redis-py {m.get('redis-py', '?')} with hiredis "
        f"{m.get('hiredis', 'not installed')}, Django {m.get('django', '?')}, django-redis "
        f"{m.get('django-redis', 'not installed')}. {c['ops']:,} operations per worker and "
        f"cell. The run took {data['seconds']:.0f} s.",
        "",
    ]
    for mix, rows in _mixes(data):
        title = _mix_title(mix)
        out += [title, "~" * len(title), ""]
        out += _rst_table(_MP_HEAD, _multiprocess_cells(rows), "8 24 10 10 10 10 10 10")
    return "\n".join(out)


def _plot(report: Report, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({r["size"] for r in report.rows})
    targets = [v for v in report.targets if any(x is not None for x in v["measured"].values())]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.45 * max(len(targets), 8) + 2))
    # Left: every target as measured ÷ bound (under 1 holds for "at most", over 1 for "at least").
    labels, width = [v["text"] for v in targets], 0.8 / max(1, len(sizes))
    for j, size in enumerate(sizes):
        scores = []
        for v in targets:
            value = v["measured"].get(size_label(size))
            scores.append(0 if value is None else value / v["bound"])
        ys = [i + j * width for i in range(len(targets))]
        left.barh(ys, scores, height=width, label=size_label(size))
    left.axvline(1.0, color="black", linewidth=1)
    left.set_yticks([i + width * (len(sizes) - 1) / 2 for i in range(len(targets))])
    left.set_yticklabels([_wrap(label, 44) for label in labels], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("measured ratio ÷ target bound (≤ 1 holds for ≤ targets, ≥ 1 for ≥ targets)")
    left.set_title("Targets")
    left.legend(fontsize=8)
    # Right: p50 latency of tieredcache and each workload's reference, single-thread rows.
    pairs = []
    for workload in WORKLOADS:
        if workload.threaded:
            continue
        subject = "tieredcache Django" if workload.id.startswith("django") else "tieredcache"
        for size in sizes:
            found = {
                r["subject"]: r
                for r in report.rows
                if r["workload"] == workload.id and r["size"] == size and r["status"] == "ok"
            }
            if subject in found and workload.reference in found:
                pairs.append(
                    (
                        f"{workload.title} ({size_label(size)})",
                        found[subject]["p50_us"],
                        found[workload.reference]["p50_us"],
                        workload.reference,
                    )
                )
    ys = list(range(len(pairs)))
    right.barh([y - 0.2 for y in ys], [p[1] for p in pairs], height=0.4, label="tieredcache")
    right.barh([y + 0.2 for y in ys], [p[2] for p in pairs], height=0.4, label="reference peer")
    right.set_yticks(ys)
    right.set_yticklabels([_wrap(f"{p[0]} vs {p[3]}", 48) for p in pairs], fontsize=7)
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("p50 latency, µs (log scale)")
    right.set_title("tieredcache and the reference peer of each workload")
    right.legend(fontsize=8)
    save_figure(fig, f"tieredcache {report.machine.get('tieredcache', '')}", report.machine, path)
    return True


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines)
