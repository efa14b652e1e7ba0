"""``capslab figures RUN_DIR_OR_CHECKPOINT [--out DIR] [--dataset NAME] [--data-dir DIR]``: the paper's analyses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from capslab.analysis import ANALYSES, make_figures
from capslab.analysis.routing import PAPER_STAT, STATS, falls_every_iteration
from capslab.cli.common import out, user_errors


@user_errors
def figures(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory, a checkpoint directory or its model.safetensors"
        ),
    ],
    out_dir: Annotated[Path | None, typer.Option("--out", help="default: <run>/figures")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="dataset plugin (default: the one it was trained on)")
    ] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="the dataset's files")] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"only this analysis ({', '.join(ANALYSES)}); repeatable; unsupported: an error"),
    ] = None,
    capsule: Annotated[
        str, typer.Option("--capsule", help="perturb the capsule of the predicted or the true class")
    ] = "predicted",
    index: Annotated[
        list[int] | None,
        typer.Option("--index", "-i", help="test digit to perturb; repeatable (default: the first of each class)"),
    ] = None,
    perturb_range: Annotated[float, typer.Option("--perturb-range", help="perturb each dimension over [-R, R]")] = 0.25,
    perturb_step: Annotated[float, typer.Option("--perturb-step", help="in steps of this size")] = 0.05,
    iterations: Annotated[
        int | None,
        typer.Option("--iterations", min=1, help="route the test set with 1..N iterations (default: as trained)"),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="test examples for the routing analysis (default: the run's train.limit_test)"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 500,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N")] = "auto",
) -> None:
    """Dimension perturbations (Sabour 2017 Fig. 4), routing per iteration (Appendix A), reconstructions."""
    report = make_figures(
        checkpoint,
        out_dir,
        only=only,
        dataset=dataset,
        data_dir=data_dir,
        device=device,
        capsule=capsule,
        indices=index,
        perturb_range=perturb_range,
        perturb_step=perturb_step,
        iterations=iterations,
        limit=limit,
        batch_size=batch_size,
    )
    for analysis, why in report.skipped.items():
        out.print(f"skipped {analysis}: {why}")
    for note in report.notes:
        out.print(f"note: {note}")
    if report.sweep:
        table = Table(title=f"routing on the test set, by iterations (trained with {report.trained_iterations})")
        for column in ("iterations", "test acc", "mean |Δb| per iteration", "coupling entropy per iteration"):
            table.add_column(column, justify="right", overflow="fold")
        for row in report.sweep:
            table.add_row(
                str(row["iterations"]),
                f"{row['accuracy']:.2%}",
                " ".join(f"{v:.3g}" for v in row.get(STATS[0], [])),
                " ".join(f"{v:.3g}" for v in row.get(STATS[1], [])),
            )
        out.print(table)
        longest = report.sweep[-1]
        for key, label in (
            (STATS[0], "mean |Δb| (tends to |û·v*|, not 0)"),
            (PAPER_STAT, "mean |Δb^(r) - Δb^(r-1)| (the paper's Fig. A.1)"),
            ("routing_coupling_change", "mean |c^(r) - c^(r-1)|"),
            ("routing_pose_change", "mean ||v^(r) - v^(r-1)||"),
        ):
            values = longest.get(key, [])
            if len(values) > 1:
                verdict = "falls" if falls_every_iteration(values) else "does NOT fall"
                out.print(f"{label} {verdict} with every iteration: {', '.join(f'{v:.3g}' for v in values)}")
    out.print(f"written to {report.out_dir}: " + ", ".join(p.name for p in report.written))


def register(app: typer.Typer) -> None:
    app.command("figures")(figures)
