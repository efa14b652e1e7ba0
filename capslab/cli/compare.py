"""``capslab compare RECIPE [--jobs N | --launcher ray] [--out DIR]``: run variants side by side, one table out."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from capslab.cli.common import out, user_errors
from capslab.compare import load_compare, run_compare
from capslab.compare.results import aggregate, device_note, table_cells, table_columns
from capslab.errors import CapslabError


@user_errors
def compare(
    recipe: Annotated[Path, typer.Argument(help="comparison recipe: base, variants / grid, seeds")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE applied to every run, e.g. data=mnist5k train.epochs=5")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="local runs at once (default: GPUs x runs-per-gpu, or 1 on a CPU)"),
    ] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="local (this machine) or ray (a Ray cluster)")] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address (default: start Ray on this machine)")
    ] = None,
    runs_per_gpu: Annotated[int, typer.Option("--runs-per-gpu", min=1, help="runs sharing each GPU")] = 1,
    cpus_per_run: Annotated[int, typer.Option("--cpus-per-run", min=1, help="CPUs each Ray task asks for")] = 1,
    seeds: Annotated[
        str | None, typer.Option("--seeds", help="comma list replacing the comparison's seeds, e.g. 0 or 0,1")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="default runs/compare-<recipe>")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="validate every run's recipe, list the runs, stop")
    ] = False,
) -> None:
    """Train every variant x seed under the same data and budget; table of mean ± std over seeds.

    KEY=VALUE overrides apply to every run (the default output directory then gets a suffix). Rerunning
    the same command resumes an interrupted comparison: finished runs are skipped.
    """
    if not recipe.is_file():
        raise CapslabError(f"{recipe}: comparison recipe not found")
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        raise CapslabError(f"--seeds {seeds!r}: a comma list of integers, e.g. 0,1,2") from None
    runs = load_compare(recipe, overrides, seed_list)
    suffix = "-" + hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:8] if overrides else ""
    out_dir = out_dir or Path("runs") / f"compare-{recipe.stem}{suffix}"
    if dry_run:
        for run in runs:
            out.print(f"{run.key}: {run.recipe.model.name} + {run.recipe.routing.name} {run.recipe.routing.params}")
        return
    paths = run_compare(
        runs,
        out_dir,
        jobs,
        launcher=launcher,
        address=address,
        runs_per_gpu=runs_per_gpu,
        cpus_per_run=cpus_per_run,
    )
    import json

    rows = aggregate(json.loads(paths["json"].read_text())["runs"])
    table = Table(title=f"capslab compare {recipe}")
    for col in table_columns(rows):
        table.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")  # wrap, never cut
    for row in rows:
        table.add_row(*table_cells(row, rows))
    out.print(table)
    note = device_note(rows)
    if note:
        out.print(note)
    out.print("written: " + ", ".join(str(p) for p in paths.values()))


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
