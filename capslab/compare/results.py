"""Aggregate per-run summaries into one row per variant: mean ± std over seeds (the paper's Table 1)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean, stdev

SUMMARY = "summary.json"  # written by the worker when a run is finished

# per-run summary fields averaged over seeds: (key, column title, format)
METRICS = [
    ("test_error", "test error %", "{:.2f}"),
    ("params", "params", "{:,.0f}"),
    ("train_img_s", "train img/s", "{:.1f}"),
    ("infer_img_s", "infer img/s", "{:.1f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("wall_s", "wall s", "{:.0f}"),
]


@dataclass
class VariantRow:
    variant: str
    seeds: list[int] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)  # sample std (n - 1); nan with one seed
    paper: str = ""  # the published number the variant reproduces, if the comparison gives one
    devices: list[str] = field(default_factory=list)  # what its runs ran on (compare/worker.py: device_name)

    def cell(self, key: str, fmt: str) -> str:
        m = self.mean.get(key, math.nan)
        if math.isnan(m):
            return "–"
        s = self.std.get(key, math.nan)
        if key.startswith("test_error") and not math.isnan(s):
            return f"{fmt.format(m)} ± {fmt.format(s)}"
        return fmt.format(m)


def metrics_of(records: Sequence[dict]) -> list[tuple[str, str, str]]:
    """METRICS, with a "<name> error %" column after the test error for each test_also set that the records
    (runs, or rows' means) report."""
    extra = sorted({k for r in records for k in r if k.startswith("test_error@")})
    cols = [(k, f"{k.split('@', 1)[1]} error %", "{:.2f}") for k in extra]
    return METRICS[:1] + cols + METRICS[1:]


def aggregate(runs: Sequence[dict]) -> list[VariantRow]:
    """runs: dicts with 'variant', 'seed' and the METRICS keys (missing -> nan); order of first sight."""
    rows: dict[str, VariantRow] = {}
    for run in runs:
        rows.setdefault(run["variant"], VariantRow(run["variant"], paper=run.get("paper") or "")).seeds.append(
            run["seed"]
        )
    for name, row in rows.items():
        mine = [r for r in runs if r["variant"] == name]
        row.devices = sorted({str(r["device"]) for r in mine if r.get("device")})
        for key, _, _ in metrics_of(runs):
            values = [float(r[key]) for r in mine if r.get(key) is not None and not math.isnan(float(r[key]))]
            row.mean[key] = mean(values) if values else math.nan
            row.std[key] = stdev(values) if len(values) > 1 else math.nan
    return list(rows.values())


def write_results(rows: list[VariantRow], runs: Sequence[dict], out_dir: Path) -> dict[str, Path]:
    """results.csv, results.json (rows + every run) and results.md in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"results.{k}" for k in ("csv", "json", "md")}
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        metrics = metrics_of([r.mean for r in rows])
        w.writerow(["variant", "seeds"] + [c for k, _, _ in metrics for c in (f"{k}_mean", f"{k}_std")])
        for row in rows:
            w.writerow(
                [row.variant, len(row.seeds)] + [row_v for k, _, _ in metrics for row_v in (row.mean[k], row.std[k])]
            )
    paths["json"].write_text(
        json.dumps({"variants": [asdict(r) for r in rows], "runs": list(runs)}, indent=2, default=str)
    )
    paths["md"].write_text(markdown_table(rows) + "\n")
    return paths


def table_columns(rows: Sequence[VariantRow]) -> list[str]:
    """Column titles: variant, seeds, the published number when any variant gives one, then METRICS."""
    paper = ["paper error %"] if any(r.paper for r in rows) else []
    return ["variant", "seeds", *paper] + [title for _, title, _ in metrics_of([r.mean for r in rows])]


def table_cells(row: VariantRow, rows: Sequence[VariantRow]) -> list[str]:
    paper = [row.paper or "–"] if any(r.paper for r in rows) else []
    return [row.variant, str(len(row.seeds)), *paper] + [
        row.cell(k, f) for k, _, f in metrics_of([r.mean for r in rows])
    ]


def markdown_table(rows: list[VariantRow]) -> str:
    head = table_columns(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(table_cells(row, rows)) + " |")
    note = device_note(rows)
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def device_note(rows: Sequence[VariantRow]) -> str:
    """Where the runs ran; a warning when they ran on different devices, whose speeds do not compare."""
    devices = sorted({d for r in rows for d in r.devices})
    if not devices:
        return ""
    if len(devices) == 1:
        return f"All runs on {devices[0]}."
    return (
        f"Runs on different devices ({'; '.join(devices)}): the img/s, memory and wall-time columns do not "
        f"compare across them."
    )
