"""Run a comparison: each run in its own process (``--jobs N`` at once), skipping finished runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

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


def launch(run_dir: Path, threads: int) -> int:
    """Train one run in a child process; its output goes to RUN_DIR/train.log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with (run_dir / "worker.log").open("w") as log:
        return subprocess.run(
            [sys.executable, "-m", "capslab.compare.worker", str(run_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode


def run_compare(
    runs: list[PlannedRun], out_dir: Path, jobs: int = 1, console: Console | None = None
) -> dict[str, Path]:
    console = console or Console(stderr=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    dirs = {run.key: prepare(run, out_dir) for run in runs}
    pending = [run for run in runs if not (dirs[run.key] / SUMMARY).exists()]
    done = len(runs) - len(pending)
    console.print(
        f"[bold]capslab compare[/]: {len(runs)} runs ({done} already finished) into {out_dir}, {jobs} at a time",
        highlight=False,
    )
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []

    def one(run: PlannedRun) -> None:
        code = launch(dirs[run.key], threads)
        status = "[green]done[/]" if code == 0 else f"[red]failed (exit {code}; see {dirs[run.key] / 'worker.log'})[/]"
        if code != 0:
            failed.append(run.key)
        console.print(f"  {run.key}: {status}", highlight=False)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, pending))
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
