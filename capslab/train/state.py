"""A training run <-> a checkpoint: what is saved, the checks on resume, loading a model to evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import capslab
from capslab.errors import CheckpointError, TrainingDiverged
from capslab.models.base import Model
from capslab.plugin import registry
from capslab.recipe.loader import parse_recipe
from capslab.recipe.schema import COMPONENTS, Recipe
from capslab.train import checkpoint as ckpt
from capslab.train.setup import make_dataset, make_model

# what a resumed run must share with its checkpoint (the weights and optimizer state must fit)
MUST_MATCH = ("data", "model", "routing", "squash")
IGNORED = {("data", "data_dir")}  # the files may move between sessions


@dataclass
class Counters:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs done
    elapsed_s: float = 0.0  # training + evaluation time over all sessions of the run
    extra: dict[str, Any] = field(default_factory=dict)


def component_versions(recipe: Recipe) -> dict[str, str]:
    """{"routing": "dynamic (plugin routing.dynamic, capslab 0.1.0)", ...} for the checkpoint metadata."""
    out = {}
    for key, kind in COMPONENTS.items():
        e = registry(kind).entry(getattr(recipe, key).name)
        out[key] = f"{e.name} (plugin {e.plugin}, {e.dist} {e.version})"
    return out


def save_run(
    run_dir: Path,
    recipe: Recipe,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    counters: Counters,
    metrics: dict[str, Any],
) -> Path:
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # never write a checkpoint that would replace a finite one with NaN
        raise TrainingDiverged(
            f"epoch {counters.epoch}: the weights hold NaN or infinite values ({', '.join(bad[:3])}); "
            f"not checkpointed, the last finite checkpoint is kept in {run_dir / 'checkpoints'}"
        )
    model_meta = {
        "format_version": ckpt.FORMAT_VERSION,
        "recipe": recipe.to_dict(),
        "step": counters.step,
        "epoch": counters.epoch,
        "metrics": metrics,
        "capslab_version": capslab.__version__,
        "torch_version": torch.__version__,
        "plugins": component_versions(recipe),
    }
    opt_tensors, opt_meta = ckpt.optimizer_state(optimizer, model)
    rng_tensors, rng_meta = ckpt.rng_state(generator)
    state_meta = {
        "format_version": ckpt.FORMAT_VERSION,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "scheduler": {**recipe.scheduler.model_dump(mode="json"), "base_lr": recipe.optimizer.lr},
        "counters": {"step": counters.step, "epoch": counters.epoch, "elapsed_s": counters.elapsed_s},
    }
    return ckpt.save_checkpoint(
        run_dir / "checkpoints",
        counters.step,
        model.state_dict(),
        model_meta,
        {**opt_tensors, **rng_tensors},
        state_meta,
        recipe.checkpoint.keep,
    )


def check_compatible(saved: dict[str, Any], recipe: Recipe, source: Path) -> None:
    """CheckpointError naming every key of MUST_MATCH sections (and optimizer.name) that differs."""
    now = recipe.to_dict()
    diffs = []
    for section in MUST_MATCH:
        a, b = _flat(saved.get(section, {}), (section,)), _flat(now[section], (section,))
        for key in sorted(set(a) | set(b)):
            if key not in IGNORED and a.get(key) != b.get(key):
                diffs.append(
                    f"{'.'.join(key)} (checkpoint {a.get(key, '<unset>')!r}, recipe {b.get(key, '<unset>')!r})"
                )
    if saved.get("optimizer", {}).get("name") != now["optimizer"]["name"]:
        diffs.append(
            f"optimizer.name (checkpoint {saved.get('optimizer', {}).get('name')!r}, "
            f"recipe {now['optimizer']['name']!r})"
        )
    if diffs:
        raise CheckpointError(
            f"{source}: cannot resume, the recipe differs from the checkpoint's in "
            f"{'; '.join(diffs)}; resume with the checkpoint's settings or start a new run"
        )


def _flat(d: Any, prefix: tuple[str, ...]) -> dict[tuple[str, ...], Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[tuple[str, ...], Any] = {}
    for k, v in d.items():
        out.update(_flat(v, prefix + (k,)))
    return out


def restore_run(
    ckpt_dir: Path, recipe: Recipe, model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> Counters:
    """Load weights, optimizer state and RNG states into a freshly built run; returns its counters."""
    model_file, state_file = ckpt_dir / ckpt.MODEL_FILE, ckpt_dir / ckpt.STATE_FILE
    weights, meta = ckpt.read_file(model_file)
    check_compatible(meta.get("recipe", {}), recipe, model_file)
    load_weights(model, weights, model_file)
    tensors, state = ckpt.read_file(state_file)
    try:
        ckpt.load_optimizer_state(optimizer, model, tensors, state["optimizer"], state_file)
        ckpt.restore_rng(tensors, state["rng"], generator)
        c = state["counters"]
        return Counters(int(c["step"]), int(c["epoch"]), float(c.get("elapsed_s", 0.0)))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{state_file}: incomplete trainer state ({type(exc).__name__}: {exc})") from None


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    bad = nonfinite_tensors(weights)
    if bad:
        raise CheckpointError(
            f"{source}: the weights hold NaN or infinite values ({', '.join(bad[:3])}): the run that wrote it had "
            f"diverged; use an earlier checkpoint"
        )
    own = model.state_dict()
    other = [k for k, t in weights.items() if k in own and t.dtype != own[k].dtype]
    if other:
        k = other[0]
        raise CheckpointError(
            f"{source}: {k} is stored as {weights[k].dtype}, the model's is {own[k].dtype} ({len(other)} tensors "
            f"differ); capslab writes the model's own dtypes: was this file converted or quantised elsewhere?"
        )
    missing, unexpected = set(own) - set(weights), set(weights) - set(own)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the model ({' '.join(str(exc).split())[:200]})") from None


def load_checkpoint_model(path: str | Path, device: torch.device) -> tuple[Model, Recipe, dict[str, Any]]:
    """(model in eval mode, its recipe, the model file's metadata) from any checkpoint path."""
    model_file = ckpt.resolve_checkpoint(path) / ckpt.MODEL_FILE
    weights, meta = ckpt.read_file(model_file)
    recipe = parse_recipe(ckpt.recipe_of(model_file), f"{model_file} (recipe)")
    model = make_model(recipe, make_dataset(recipe).info)
    load_weights(model, weights, model_file)
    return model.to(device).eval(), recipe, meta
