"""``capslab figures``: the paper's analyses of a trained checkpoint, as PNGs (and JSON numbers).

- ``reconstructions``: test digits above their reconstructions (the trainer's own figure);
- ``perturbations``: dimension perturbations of a class capsule (capslab.analysis.perturb);
- ``routing``: routing diagnostics over training (metrics.jsonl) and per iteration on the test set,
  routed with 1..N iterations (capslab.analysis.routing).

Analyses a model cannot support are skipped with the reason, unless asked for by name (then it is a
CapslabError); a model that supports none is a CapslabError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capslab.analysis import perturb, plots
from capslab.analysis import routing as rt
from capslab.analysis.data import checkpoint_split
from capslab.data.base import Split
from capslab.errors import CapslabError
from capslab.train.checkpoint import resolve_checkpoint
from capslab.train.figures import save_reconstructions
from capslab.train.report import read_metrics
from capslab.train.setup import resolve_device
from capslab.train.state import load_checkpoint_model

ANALYSES = ("reconstructions", "perturbations", "routing")


@dataclass
class FiguresReport:
    checkpoint: Path
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # analysis -> why
    notes: list[str] = field(default_factory=list)
    sweep: list[dict[str, Any]] = field(default_factory=list)  # per k: iteration_sweep's rows
    trained_iterations: int | None = None


def default_out_dir(ckpt_dir: Path) -> Path:
    """<run>/figures for a run's checkpoint; figures-<name> beside a loose checkpoint directory."""
    if ckpt_dir.parent.name == "checkpoints":
        return ckpt_dir.parent.parent / "figures"
    return ckpt_dir.parent / f"figures-{ckpt_dir.name}"


def make_figures(
    path: str | Path,
    out_dir: Path | None = None,
    *,
    only: list[str] | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    capsule: str = "predicted",
    indices: list[int] | None = None,
    perturb_range: float = 0.25,
    perturb_step: float = 0.05,
    iterations: int | None = None,
    limit: int | None = None,
    batch_size: int = 500,
) -> FiguresReport:
    """Draw the analyses of ``only`` (default: every one the model supports) into ``out_dir``."""
    unknown = sorted(set(only or ()) - set(ANALYSES))
    if unknown:
        raise CapslabError(f"--only {unknown[0]}: unknown analysis; choose from {', '.join(ANALYSES)}")
    if capsule not in ("predicted", "true"):
        raise CapslabError(f"--capsule {capsule}: use predicted or true")
    wanted = [a for a in ANALYSES if not only or a in only]
    values = perturb.perturbation_values(perturb_range, perturb_step) if "perturbations" in wanted else None
    ckpt_dir = resolve_checkpoint(path)
    dev = resolve_device(device)
    model, recipe, _ = load_checkpoint_model(ckpt_dir, dev)
    test = checkpoint_split(recipe, dataset=dataset, data_dir=data_dir)
    report = FiguresReport(ckpt_dir, out_dir or default_out_dir(ckpt_dir))
    report.out_dir.mkdir(parents=True, exist_ok=True)
    name = getattr(model, "name", type(model).__name__)
    limit = limit if limit is not None else recipe.train.limit_test  # the run's own test set by default

    for analysis in wanted:
        try:
            if analysis == "reconstructions":
                target = report.out_dir / "reconstructions.png"
                if not save_reconstructions(model, test, target, dev):
                    raise CapslabError(f"{name}: no reconstructions: it has no decoder")
                report.written.append(target)
            elif analysis == "perturbations":
                _perturbations(model, test, dev, capsule, indices, values, report)
            else:
                _routing(
                    model,
                    test if limit is None else test.subset(slice(0, limit)),
                    dev,
                    iterations,
                    batch_size,
                    ckpt_dir,
                    report,
                    model.info.num_classes,
                )
        except CapslabError as exc:
            if only:
                raise
            report.skipped[analysis] = str(exc)
    if not report.written:
        raise CapslabError(f"{ckpt_dir}: no figures: " + "; ".join(report.skipped.values()))
    return report


def _perturbations(model, test: Split, dev, capsule: str, indices, values, report: FiguresReport) -> None:
    decoder = perturb.decoder_of(model)
    index = perturb.pick_digits(test.labels, model.info.num_classes, indices)
    poses, predicted, true = perturb.class_poses(model, test, index, dev)
    classes = predicted if capsule == "predicted" else true
    images = perturb.perturb_dimensions(decoder, poses, classes.to(dev), values).cpu()  # (n, D, V, C, H, W)
    for i, idx in enumerate(index.tolist()):
        k = int(classes[i])
        title = (
            f"test #{idx}: label {int(true[i])}, predicted {int(predicted[i])}; "
            f"dimensions of class capsule {k} perturbed"
        )
        target = report.out_dir / f"perturbations_test{idx}_capsule{k}.png"
        report.written.append(perturb.save_perturbation_figure(target, images[i], values, title))


def _routing(
    model,
    data: Split,
    dev,
    iterations: int | None,
    batch_size: int,
    ckpt_dir: Path,
    report: FiguresReport,
    num_classes: int,
) -> None:
    name = getattr(model, "name", type(model).__name__)
    found = rt.routings(model)
    if not found:
        raise CapslabError(f"{name}: no routing analysis: it has no routing layer")
    layer = found[-1]  # the class layer's (every routing of a model comes from the recipe's one section)
    report.trained_iterations = layer.iterations
    records = read_metrics(ckpt_dir.parent.parent / "metrics.jsonl") if ckpt_dir.parent.name == "checkpoints" else []
    history = rt.training_history(records)
    if history:
        report.written.append(plots.plot_training(history, report.out_dir / "routing_training.png", num_classes))
        evals = [{k: history[k][e] for k in (*rt.STATS, *rt.CONVERGENCE)} for e in range(len(history["epoch"]))]
        report.written.append(
            plots.plot_convergence(
                evals,
                [f"epoch {e}" for e in history["epoch"]],
                report.out_dir / "routing_convergence_training.png",
                f"{layer.name} routing over training (test set, each evaluation)",
            )
        )
    else:
        report.notes.append(
            "no routing diagnostics in the run's metrics.jsonl (train with diagnostics: true for routing_training.png)"
        )
    n = iterations or layer.iterations
    if not rt.sweeps_iterations(layer):
        report.notes.append(f"{layer.name} routing has no iterations parameter: one pass only")
        n = 1
    report.sweep = rt.iteration_sweep(model, data, dev, n, batch_size)
    if not report.sweep or rt.STATS[0] not in report.sweep[-1]:
        raise CapslabError(f"{name}: no routing analysis: {layer.name} routing reports no per-iteration diagnostics")
    report.written.append(
        plots.plot_sweep(
            report.sweep, report.out_dir / "routing_iterations.png", report.trained_iterations, num_classes
        )
    )
    report.written.append(
        plots.plot_convergence(
            report.sweep[-1:],
            [f"{n} iterations"],
            report.out_dir / "routing_convergence.png",
            f"{layer.name} routing of the test set, trained with {report.trained_iterations} iterations",
        )
    )
    numbers = report.out_dir / "routing_iterations.json"
    longest = report.sweep[-1]
    paper = longest.get(rt.PAPER_STAT, [])
    numbers.write_text(
        json.dumps(
            {
                "checkpoint": str(ckpt_dir),
                "routing": layer.name,
                "trained_iterations": report.trained_iterations,
                "examples": len(data),
                "logit_change": longest[rt.STATS[0]],
                **{key.removeprefix("routing_"): longest.get(key, []) for key in rt.CONVERGENCE},
                "paper_statistic": rt.PAPER_STAT.removeprefix("routing_"),
                "falls_every_iteration": rt.falls_every_iteration(paper),
                "by_iterations": report.sweep,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    report.written.append(numbers)
