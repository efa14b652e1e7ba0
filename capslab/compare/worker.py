"""One run of a comparison, in its own process so its peak memory is its own.

``python -m capslab.compare.worker RUN_DIR``: trains RUN_DIR/recipe.yaml (resuming from the run's last
checkpoint if there is one), then writes RUN_DIR/summary.json: test error, parameters, training and
inference img/s, peak memory, wall time. A summary.json marks the run finished.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from capslab.compare.results import SUMMARY
from capslab.recipe import load_recipe
from capslab.train import checkpoint as ckpt
from capslab.train import evaluate, load_checkpoint_model, resolve_checkpoint, train
from capslab.train.data import load_split
from capslab.train.report import read_metrics
from capslab.train.setup import device_name, make_dataset, resolve_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_img_s(run_dir: Path, recipe, device: torch.device, repeats: int = 2) -> float:
    """Images per second of a test-set pass, eval mode, no grad (best of ``repeats``)."""
    model, _, _ = load_checkpoint_model(run_dir, device)
    test = load_split(make_dataset(recipe), "test", recipe.train.limit_test, recipe.train.crop)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            evaluate(
                model,
                test,
                device=device,
                batch_size=recipe.train.eval_batch_size,
                bf16=recipe.train.bf16,
                channels_last=recipe.train.channels_last,
            )
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return len(test) / best


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(run_dir: Path) -> dict:
    recipe = load_recipe(run_dir / "recipe.yaml")
    resume = None
    if (run_dir / "checkpoints" / ckpt.LATEST).exists():
        resume = resolve_checkpoint(run_dir, verify=True)
    t0 = time.perf_counter()
    with (run_dir / "train.log").open("a") as log:
        final = train(recipe, run_dir, resume=resume, console=Console(file=log, width=120))
    wall = time.perf_counter() - t0
    device = resolve_device(recipe.train.device)
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    final = final or evals[-1]
    model, _, _ = load_checkpoint_model(run_dir, device)
    summary = {
        "test_error": 100 * final["test_error"],
        "test_accuracy": 100 * final["test_accuracy"],
        "epochs": final["epoch"],
        "params": sum(p.numel() for p in model.parameters()),
        "train_img_s": sum(r["img_per_s"] for r in evals) / len(evals),
        "infer_img_s": inference_img_s(run_dir, recipe, device),
        "peak_memory_mb": peak_memory_mb(device),
        "wall_s": final.get("elapsed_s", wall),
        "device": device_name(device),
        **{k: 100 * v for k, v in final.items() if k.startswith("test_error@")},  # the test_also sets
    }
    tmp = run_dir / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, run_dir / SUMMARY)
    return summary


if __name__ == "__main__":
    run(Path(sys.argv[1]))
