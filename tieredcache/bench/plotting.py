"""What every plot of the benchmark suite shares (with matplotlib, the ``bench`` extra)."""

from __future__ import annotations

import typing as t

__all__ = ["save_figure"]


def save_figure(fig: t.Any, title: str, machine: t.Mapping[str, t.Any], path: str) -> None:
    """Title ``fig`` with ``title`` and the machine, write it to ``path`` and close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(
        f"{title} - {machine.get('cpu', '?')}, {machine.get('nproc', '?')} cores, "
        f"Python {machine.get('python', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
