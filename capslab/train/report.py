"""What a run reports: ``metrics.jsonl`` (one JSON record per line) and the rich progress display."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class Meter:
    """Running example-weighted mean loss and accuracy."""

    n: int = 0
    loss_sum: float = 0.0
    hits: int = 0

    def add(self, n: int, loss: float, hits: int) -> None:
        self.n, self.loss_sum, self.hits = self.n + n, self.loss_sum + loss * n, self.hits + hits

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.n, 1)

    @property
    def accuracy(self) -> float:
        return self.hits / max(self.n, 1)


class MetricsLog:
    """Appends records to metrics.jsonl; on resume, drops records past the checkpoint's step first
    (they belong to the interrupted tail of the run that is about to be redone)."""

    def __init__(self, path: Path | None, resume_step: int | None = None, loggers: Sequence[Any] = ()):
        self.path = path  # None: records go nowhere (a data-parallel rank other than 0)
        self.loggers = list(loggers)  # capslab.Logger plugins: each record, figure and the recipe also go there
        if path is not None and resume_step is not None and path.is_file():
            keep = [
                line
                for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step(line) <= resume_step
            ]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
            os.replace(tmp, path)
        elif path is not None and resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        """One JSON line; a NaN or infinite value is written as null (bare NaN is not JSON)."""
        record = finite_or_null(record)
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for logger in self.loggers:
            logger.log(record)

    def params(self, recipe: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(recipe)

    def image(self, name: str, path: Path, step: int) -> None:
        if path.is_file():
            for logger in self.loggers:
                logger.log_image(name, path, step)

    def close(self, status: str = "finished") -> None:
        for logger in self.loggers:
            logger.close(status)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        """The trackers are flushed and closed however the run ends, and told whether it failed."""
        if exc_type is None:
            self.close("finished")
        else:
            self.close("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts and lists too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # an unreadable (half-written) line goes


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def make_progress(console: Console) -> Progress:
    """Epoch, step m/n, loss, accuracy, img/s, elapsed and ETA of the whole run."""
    return Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:6.2%}  {task.fields[ips]:5.0f} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    r = record
    return (
        f"epoch {r['epoch']}/{epochs}  step {r['step']}  train loss {r['train_loss']:.4f} "
        f"acc {r['train_accuracy']:.2%}  |  test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.2%} "
        f"(error {r['test_error']:.2%}){extra_errors(r)}  |  {r['img_per_s']:.0f} img/s  {r['elapsed_s']:.0f} s"
    )


def extra_errors(record: dict[str, Any]) -> str:
    """'  affnist error 21.30%' for each test_also set of an eval record."""
    return "".join(f"  {k.split('@', 1)[1]} error {v:.2%}" for k, v in record.items() if k.startswith("test_error@"))
