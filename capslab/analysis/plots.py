"""Line plots of the routing analysis (matplotlib's object API: no pyplot state, no GUI backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from capslab.analysis.routing import STATS


def _figure(panels: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * panels, 3.4))
    return fig, fig.subplots(1, panels, squeeze=False)[0]


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
