"""Line plots of the routing analysis (matplotlib's object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from capslab.analysis.routing import CONVERGENCE, PAPER_STAT, STATS


def _figure(panels: int, rows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels, 3.4 * rows))
    axes = fig.subplots(rows, panels, squeeze=False)
    return fig, (axes[0] if rows == 1 else axes)


def _log_if_positive(ax, values: list[float]) -> None:
    """Log y when every value is > 0 (|delta b| spans decades); linear otherwise (log 0 is undefined)."""
    if values and all(v > 0 for v in values if not math.isnan(v)):
        ax.set_yscale("log")


def _integer_x(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    return path


def _per_iteration(series: list[list[float]]) -> list[list[float]]:
    """[[iteration values] per evaluation] -> [[evaluation values] per iteration], NaN where missing."""
    n = max((len(s) for s in series), default=0)
    return [[s[r] if r < len(s) else math.nan for s in series] for r in range(n)]


def plot_training(history: dict[str, Any], path: Path, num_classes: int | None = None) -> Path:
    """|delta b| per iteration over training (log y), the last evaluation's |delta b| vs iteration, entropy."""
    fig, (a, b, c) = _figure(3)
    x = history["epoch"]
    change = _per_iteration(history[STATS[0]])
    for r, ys in enumerate(change):
        a.plot(x, ys, marker="o", ms=3, label=f"iteration {r + 1}")
    _log_if_positive(a, [v for ys in change for v in ys])
    a.set(xlabel="epoch", ylabel="mean |Δb| (routing logits)", title="change of the routing logits")
    a.legend(fontsize=7)
    _integer_x(a, c)
    last = history[STATS[0]][-1]
    b.plot(range(1, len(last) + 1), last, marker="o")
    _log_if_positive(b, last)
    b.set(xlabel="routing iteration", ylabel="mean |Δb|", title=f"per iteration, last evaluation (epoch {x[-1]})")
    b.set_xticks(range(1, len(last) + 1))
    for r, ys in enumerate(_per_iteration(history[STATS[1]])):
        c.plot(x, ys, marker="o", ms=3, label=f"iteration {r + 1}")
    if num_classes:
        c.axhline(math.log(num_classes), ls="--", color="gray", lw=1, label="uniform (log J)")
    c.set(xlabel="epoch", ylabel="coupling entropy (nats)", title="coupling entropy")
    c.legend(fontsize=7)
    return _save(fig, path)


def plot_sweep(rows: list[dict[str, Any]], path: Path, trained: int, num_classes: int | None = None) -> Path:
    """From a checkpoint: |delta b| and entropy vs iteration (the longest run), accuracy vs inference iterations."""
    fig, (a, b, c) = _figure(3)
    longest = rows[-1]
    change, entropy = longest.get(STATS[0], []), longest.get(STATS[1], [])
    its = range(1, len(change) + 1)
    a.plot(its, change, marker="o")
    _log_if_positive(a, change)
    a.set(xlabel="routing iteration", ylabel="mean |Δb| (test set)", title="change of the routing logits")
    b.plot(range(1, len(entropy) + 1), entropy, marker="o")
    if num_classes:
        b.axhline(math.log(num_classes), ls="--", color="gray", lw=1, label="uniform (log J)")
        b.legend(fontsize=7)
    b.set(xlabel="routing iteration", ylabel="coupling entropy (nats)", title="coupling entropy")
    ks = [r["iterations"] for r in rows]
    c.plot(ks, [100 * r["accuracy"] for r in rows], marker="o")
    c.axvline(trained, ls="--", color="gray", lw=1, label=f"trained with {trained}")
    c.set(xlabel="routing iterations at inference", ylabel="test accuracy %", title="accuracy")
    c.legend(fontsize=7)
    for ax in (a, b, c):
        ax.set_xticks(ks if ax is c else list(its))
    return _save(fig, path)


LABELS = {
    "routing_logit_change": "mean |b^(r+1) - b^(r)|",
    "routing_logit_change2": "mean |Δb^(r) - Δb^(r-1)|",
    "routing_coupling_change": "mean |c^(r) - c^(r-1)|",
    "routing_pose_change": "mean ||v^(r) - v^(r-1)||",
}


def plot_convergence(curves: list[dict[str, Any]], labels: list[str], path: Path, title: str) -> Path:
    """One column per statistic (|Δb| and the three that vanish at convergence), value vs routing iteration,
    linear (top) and log (bottom) y; one line per entry of ``curves`` (an evaluation over training, or a
    number of inference iterations), coloured from early (light) to late (dark)."""
    from matplotlib import colormaps

    keys = ("routing_logit_change", *CONVERGENCE)
    fig, axes = _figure(len(keys), rows=2)
    colours = colormaps["viridis_r"]
    n = max(len(curves) - 1, 1)
    for col, key in enumerate(keys):
        first = 1 if key == "routing_logit_change" else 2  # the differences start at the second iteration
        for k, (row, label) in enumerate(zip(curves, labels)):
            ys = row.get(key, [])
            if not ys:
                continue
            xs = range(first, first + len(ys))
            for ax in axes[:, col]:
                ax.plot(xs, ys, marker="o", ms=3, color=colours(0.15 + 0.85 * k / n), label=label)
        paper = " (paper Fig. A.1)" if key == PAPER_STAT else ""
        for r, ax in enumerate(axes[:, col]):
            ax.set(xlabel="routing iteration r", ylabel=LABELS[key] + paper if r == 0 else "log scale")
            _integer_x(ax)
        _log_if_positive(axes[1, col], [v for row in curves for v in row.get(key, [])])
        axes[0, col].set_title(LABELS[key] + paper, fontsize=9)
    handles, names = axes[0, 0].get_legend_handles_labels()
    if len(names) > 8:  # keep the legend readable: first, a few in between, last
        pick = sorted({0, len(names) // 3, 2 * len(names) // 3, len(names) - 1})
        handles, names = [handles[i] for i in pick], [names[i] for i in pick]
    axes[0, 0].legend(handles, names, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
