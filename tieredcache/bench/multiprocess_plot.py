"""The plot of the worker-process benchmark (with matplotlib, the ``bench`` extra).

One column per read/write mix: on top, each subject's throughput over raw redis-py's in the
same workers, by number of worker processes (log scale, with the 1x line); below, the Redis
commands each operation cost.
"""

from __future__ import annotations

import typing as t

from tieredcache.bench.plotting import save_figure

__all__ = ["plot_multiprocess"]


def plot_multiprocess(data: t.Mapping[str, t.Any], path: str) -> bool:
    """Draw ``data`` (a :class:`~tieredcache.bench.report.MultiprocessReport` as a dict) into
    ``path``; False when matplotlib is not installed or nothing was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in data["rows"] if r.get("status") == "ok"]
    mixes = list(dict.fromkeys(r["mix"] for r in rows))
    if not mixes:
        return False
    subjects = list(dict.fromkeys(r["subject"] for r in rows))
    fig, axes = plt.subplots(2, len(mixes), figsize=(5 * len(mixes), 7), squeeze=False)
    for column, mix in enumerate(mixes):
        top, bottom = axes[0][column], axes[1][column]
        for subject in subjects:
            cells = sorted(
                (r for r in rows if r["mix"] == mix and r["subject"] == subject),
                key=lambda r: r["processes"],
            )
            if not cells:
                continue
            procs = [r["processes"] for r in cells]
            if all(r.get("ratio") is not None for r in cells):
                top.plot(procs, [r["ratio"] for r in cells], marker="o", label=subject)
            bottom.plot(procs, [r["commands_per_op"] for r in cells], marker="o", label=subject)
        top.axhline(1.0, color="black", linewidth=1)
        top.set_yscale("log")
        top.set_title(f"{mix} reads/writes")
        top.set_ylabel("throughput ÷ raw redis-py")
        bottom.set_ylabel("Redis commands per operation")
        bottom.set_ylim(bottom=0)
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_xticks(sorted({r["processes"] for r in rows}))
            axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_xlabel("worker processes")
        top.legend(fontsize=7)
    save_figure(fig, "Worker processes sharing one Redis", data.get("machine", {}), path)
    return True
