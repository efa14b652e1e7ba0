"""``capslab eval CHECKPOINT [--dataset NAME] [--data-dir DIR]``: test error of a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from capslab.analysis.data import checkpoint_split
from capslab.build import build_loss
from capslab.cli.common import out, user_errors
from capslab.train.evaluate import evaluate
from capslab.train.runtime import resolve_device
from capslab.train.state import load_checkpoint_model


@user_errors
def eval_checkpoint(
    checkpoint: Annotated[
        Path, typer.Argument(help="a run directory, a checkpoint directory or its model.safetensors")
    ],
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="dataset plugin (default: the one it was trained on)")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="the dataset's files, e.g. MNIST IDX files")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="train or test")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the first N examples")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
) -> None:
    """Evaluate a checkpoint on a dataset split: accuracy, error and loss."""
    dev = resolve_device(device)
    model, recipe, meta = load_checkpoint_model(checkpoint, dev)
    split_data = checkpoint_split(recipe, dataset=dataset, data_dir=data_dir, split=split, limit=limit)
    m = evaluate(
        model,
        split_data,
        device=dev,
        batch_size=batch_size,
        loss_fn=build_loss(recipe.loss.as_dict()).to(dev),
        recon=recipe.reconstruction,
    )
    result = {
        "checkpoint": str(checkpoint),
        "step": meta.get("step"),
        "epoch": meta.get("epoch"),
        "dataset": dataset or recipe.data.name,
        "split": split,
        **m,
    }
    if as_json:
        out.print_json(json.dumps(result))
        return
    out.print(
        f"{checkpoint} (step {result['step']}, epoch {result['epoch']}) on {result['dataset']} {split} "
        f"({m['examples']} examples): accuracy {m['accuracy']:.2%}  error {m['error']:.2%}  loss {m['loss']:.4f}"
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_checkpoint)
