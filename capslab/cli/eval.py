"""``capslab eval CHECKPOINT [CHECKPOINT ...] [--dataset NAME] [--data-dir DIR]``: test error of a checkpoint,
or of the ensemble of several (their class scores averaged, as the CapsNet paper's CIFAR-10 result)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from capslab.analysis.data import checkpoint_split
from capslab.build import build_loss
from capslab.cli.common import out, user_errors
from capslab.errors import CapslabError
from capslab.train.evaluate import evaluate, evaluate_ensemble
from capslab.train.setup import resolve_device
from capslab.train.state import load_checkpoint_model


@user_errors
def eval_checkpoint(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(help="a run directory, a checkpoint directory or its model.safetensors; several: an ensemble"),
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
    """Evaluate a checkpoint on a dataset split: accuracy, error and loss; several checkpoints: their ensemble."""
    dev = resolve_device(device)
    if len(checkpoints) > 1:
        return _ensemble(checkpoints, dev, dataset, data_dir, split, batch_size, limit, as_json)
    checkpoint = checkpoints[0]
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


def _ensemble(checkpoints, dev, dataset, data_dir, split, batch_size, limit, as_json) -> None:
    """Average the class scores of several checkpoints trained on the same data."""
    loaded = [load_checkpoint_model(c, dev) for c in checkpoints]
    recipes = [recipe for _, recipe, _ in loaded]
    first = recipes[0]
    for c, r in zip(checkpoints[1:], recipes[1:]):
        if (r.data.name, r.train.crop) != (first.data.name, first.train.crop):
            raise CapslabError(
                f"{c}: trained on {r.data.name} (crop {r.train.crop}), but {checkpoints[0]} on {first.data.name} "
                f"(crop {first.train.crop}); an ensemble averages models of one dataset and input size"
            )
    split_data = checkpoint_split(first, dataset=dataset, data_dir=data_dir, split=split, limit=limit)
    m = evaluate_ensemble([model for model, _, _ in loaded], split_data, device=dev, batch_size=batch_size)
    result = {"checkpoints": [str(c) for c in checkpoints], "dataset": dataset or first.data.name, "split": split, **m}
    if as_json:
        out.print_json(json.dumps(result))
        return
    members = ", ".join(f"{a:.2%}" for a in m["members"])
    out.print(
        f"ensemble of {len(checkpoints)} on {result['dataset']} {split} ({m['examples']} examples): "
        f"accuracy {m['accuracy']:.2%}  error {m['error']:.2%}  (members: {members})"
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_checkpoint)
