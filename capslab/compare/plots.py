"""PNG figures of a comparison: test error per variant with error bars, training curves per variant."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from capslab.compare.results import VariantRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(rows: list[VariantRow], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rows) + 2), 3.5))
    means = [r.mean["test_error"] for r in rows]
    errs = [0 if math.isnan(r.std["test_error"]) else r.std["test_error"] for r in rows]
    ax.bar(range(len(rows)), means, yerr=errs, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r.variant for r in rows], rotation=30, ha="right")
    ax.set_ylabel("test error % (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path, ylabel: str = "training loss") -> Path:
    """curves: variant -> [(step, value), ...] (seed 0's or the seeds' mean)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in curves.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    if any(curves.values()):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
