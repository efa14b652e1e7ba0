"""Run a comparison: each run in its own process, placed by a launcher (local or Ray), skipping finished runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rich.console import Console

from capslab.compare.launch import run_local, slots_for
from capslab.compare.plots import plot_curves, plot_errors
from capslab.compare.results import SUMMARY, aggregate, write_results
from capslab.compare.sweep import PlannedRun
from capslab.errors import CapslabError
from capslab.recipe import dump_recipe
from capslab.train.report import read_metrics


def prepare(run: PlannedRun, out_dir: Path) -> Path:
    """The run's directory with its recipe; a directory left by a different recipe (the comparison or its
    overrides changed) is emptied, so its results and checkpoints are never taken for this run's."""
    run_dir = out_dir / run.key
    run_dir.mkdir(parents=True, exist_ok=True)
    new = run_dir / "planned.yaml.new"
    dump_recipe(run.recipe, new, header=f"variant {run.variant!r}, seed {run.seed}")
    planned = run_dir / "planned.yaml"  # what the comparison asked for (the trainer rewrites recipe.yaml)
    if planned.exists() and planned.read_bytes() != new.read_bytes():
        for child in run_dir.iterdir():
            if child != new:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    new.replace(planned)
    shutil.copyfile(planned, run_dir / "recipe.yaml")
    return run_dir


def run_compare(
    runs: list[PlannedRun],
    out_dir: Path,
    jobs: int | None = None,
    console: Console | None = None,
    *,
    launcher: str = "local",
    address: str | None = None,
    runs_per_gpu: int = 1,
    cpus_per_run: int = 1,
) -> dict[str, Path]:
    """Train every run not finished yet (``launcher`` local or ray, see capslab/compare/launch.py), then
    write the results table and figures of every finished run."""
    if launcher not in ("local", "ray"):
        raise CapslabError(f"--launcher {launcher!r}: use local or ray")
    console = console or Console(stderr=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = {run.key: prepare(run, out_dir) for run in runs}
    pending = [run for run in runs if not (dirs[run.key] / SUMMARY).exists()]
    done = len(runs) - len(pending)
    devices = [run.recipe.train.device for run in pending]
    slots = slots_for(devices, jobs, runs_per_gpu) if launcher == "local" else []
    where = f"as Ray tasks ({address or 'Ray started here'})" if launcher == "ray" else f"{len(slots)} at a time"
    console.print(
        f"[bold]capslab compare[/]: {len(runs)} runs ({done} already finished) into {out_dir}, {where}",
        highlight=False,
    )
    failed = []

    def on_done(run_dir: Path, code: int, place: str) -> None:
        key = str(run_dir.relative_to(out_dir))
        status = "[green]done[/]" if code == 0 else f"[red]failed (exit {code}; see {run_dir / 'worker.log'})[/]"
        if code != 0:
            failed.append(key)
        console.print(f"  {key} ({place}): {status}", highlight=False)

    pending_dirs = [dirs[run.key] for run in pending]
    if launcher == "ray":
        from capslab.compare.ray_launcher import run_ray

        run_ray(pending_dirs, out_dir, address, cpus_per_run, runs_per_gpu, on_done)
    else:
        run_local(pending_dirs, devices, slots, on_done)
    summaries = []
    for run in runs:
        path = dirs[run.key] / SUMMARY
        if path.exists():
            summaries.append(
                {"variant": run.variant, "seed": run.seed, "paper": run.paper, **json.loads(path.read_text())}
            )
    rows = aggregate(summaries)
    paths = write_results(rows, summaries, out_dir)
    if rows:
        paths["errors_png"] = plot_errors(rows, out_dir / "test_error.png")
        curves = {
            run.variant: [
                (r["step"], r["loss"])
                for r in read_metrics(dirs[run.key] / "metrics.jsonl")
                if r.get("kind") == "train"
            ]
            for run in runs
            if run.seed == runs[0].seed and (dirs[run.key] / SUMMARY).exists()
        }
        if any(curves.values()):  # never an empty plot
            paths["curves_png"] = plot_curves(curves, out_dir / "training_curves.png")
    if failed:
        raise CapslabError(
            f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}); fix and rerun the same "
            f"command to resume, finished runs are skipped"
        )
    return paths
