"""``capslab inspect CHECKPOINT``: step, recipe, metrics and a summary of every tensor (no plugins needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from ruamel.yaml import YAML

from capslab.cli.common import out, user_errors
from capslab.train import checkpoint as ckpt
from capslab.train.report import read_metrics


@user_errors
def inspect(
    checkpoint: Annotated[
        Path, typer.Argument(help="a run directory, a checkpoint directory or its model.safetensors")
    ],
    tensors: Annotated[int, typer.Option("--tensors", min=0, help="list at most this many tensors")] = 40,
    as_json: Annotated[bool, typer.Option("--json", help="print the metadata as JSON")] = False,
) -> None:
    """Show what a checkpoint holds: when it was taken, its recipe, its metrics and its tensors."""
    ckpt_dir = ckpt.resolve_checkpoint(checkpoint)
    weights, meta = ckpt.read_file(ckpt_dir / ckpt.MODEL_FILE)
    if as_json:
        out.print_json(json.dumps({**meta, "tensors": {k: list(v.shape) for k, v in weights.items()}}))
        return
    total = sum(v.numel() for v in weights.values())
    out.print(
        f"[bold]{ckpt_dir}[/]: step {meta.get('step')}, epoch {meta.get('epoch')}, {len(weights)} tensors, "
        f"{total:,} parameters; capslab {meta.get('capslab_version')}, torch {meta.get('torch_version')}, "
        f"format {meta.get('format_version')}; trainer state "
        f"{'present' if (ckpt_dir / ckpt.STATE_FILE).is_file() else 'missing'}"
    )
    for section, version in (meta.get("plugins") or {}).items():
        out.print(f"  {section}: {version}")

    metrics = Table(title="metrics at this checkpoint", show_header=False)
    for key, value in (meta.get("metrics") or {}).items():
        metrics.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    out.print(metrics)

    run_dir = ckpt_dir.parent.parent
    history = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    if history:
        table = Table(title=f"evaluations in {run_dir / 'metrics.jsonl'}")
        for column in ("epoch", "step", "train acc", "test acc", "test error", "img/s"):
            table.add_column(column, justify="right", overflow="fold")
        for r in history:
            table.add_row(
                str(r["epoch"]),
                str(r["step"]),
                f"{r['train_accuracy']:.2%}",
                f"{r['test_accuracy']:.2%}",
                f"{r['test_error']:.2%}",
                f"{r['img_per_s']:.0f}",
            )
        out.print(table)

    text = io.StringIO()
    YAML(typ="rt").dump(meta.get("recipe") or {}, text)
    out.print("[bold]recipe[/]")
    out.print(text.getvalue().rstrip(), markup=False)

    table = Table(title=f"tensors (first {min(tensors, len(weights))} of {len(weights)})")
    for column in ("name", "shape", "dtype", "numel", "mean", "std"):
        table.add_column(column, justify="left" if column == "name" else "right", overflow="fold")
    for name, t in list(weights.items())[:tensors]:
        f = t.float()
        std = f"{float(f.std()):.4g}" if t.numel() > 1 else "-"
        table.add_row(
            name,
            "x".join(map(str, t.shape)) or "()",
            str(t.dtype).removeprefix("torch."),
            f"{t.numel():,}",
            f"{float(f.mean()):.4g}" if t.numel() else "-",
            std,
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
