"""``capslab train [RECIPE] [key=value ...] [--resume RUN_DIR] [--run-dir DIR]``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from capslab.cli.common import out, user_errors
from capslab.errors import CapslabError
from capslab.recipe import find_recipe, load_recipe, parse_recipe
from capslab.train import checkpoint as ckpt
from capslab.train.trainer import train as run_training


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[RECIPE] [key=value ...]``: the first argument is the recipe unless it is an override."""
    if args and ("=" not in args[0] or Path(args[0]).is_file()):
        return args[0], args[1:]
    return None, args


@user_errors
def train(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="RECIPE KEY=VALUE",
            show_default=False,
            help="a recipe file or embedded name (default: quickstart), then overrides such as train.epochs=2",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="continue this run exactly from its last checkpoint "
            "(its own recipe unless RECIPE is given; overrides such as train.epochs=20 apply)",
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", metavar="DIR", help="where the run goes (default runs/<recipe>-<timestamp>)"),
    ] = None,
    nproc: Annotated[
        int,
        typer.Option("--nproc", min=1, help="data-parallel processes on this machine (torchrun; one per GPU)"),
    ] = 1,
) -> None:
    """Train a recipe; each epoch is evaluated, logged to metrics.jsonl and checkpointed."""
    recipe_arg, overrides = split_args(args or [])
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # start torchrun, which starts this command once per process
        target = run_dir or resume or Path("runs") / f"{find_recipe(recipe_arg).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "capslab",
            "train",
            *(args or []),
            "--run-dir",
            str(target),
        ]
        if resume is not None:
            cmd += ["--resume", str(resume)]
        raise typer.Exit(subprocess.run(cmd).returncode)
    ckpt_dir = None
    if resume is not None:
        ckpt_dir = ckpt.resolve_checkpoint(resume, verify=True)  # the newest intact checkpoint
        model_file = ckpt_dir / ckpt.MODEL_FILE
        if recipe_arg is None:
            recipe = parse_recipe(ckpt.recipe_of(model_file), f"{model_file} (recipe)", overrides)
        else:
            recipe = load_recipe(find_recipe(recipe_arg), overrides)
        if run_dir is None:
            if ckpt_dir.parent.name != "checkpoints":
                raise CapslabError(f"{resume}: not inside a run directory; name one with --run-dir DIR")
            run_dir = ckpt_dir.parent.parent
        out.print(f"resuming {ckpt_dir}")
    else:
        path = find_recipe(recipe_arg)
        recipe = load_recipe(path, overrides)
        run_dir = run_dir or Path("runs") / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "checkpoints" / ckpt.LATEST).exists():
            raise CapslabError(
                f"{run_dir}: already holds a run; continue it with --resume {run_dir} or choose another --run-dir"
            )
    try:
        record = run_training(recipe, run_dir, resume=ckpt_dir, console=out)
    except KeyboardInterrupt:
        out.print(f"\ninterrupted; continue from the last finished epoch with: capslab train --resume {run_dir}")
        raise typer.Exit(130) from None
    if record and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        out.print(
            f"[bold]done[/]: test accuracy {record['test_accuracy']:.2%} (error {record['test_error']:.2%}) "
            f"after {record['epoch']} epochs, {record['elapsed_s']:.0f} s. Run: {run_dir} "
            f"({', '.join(p.name for p in sorted(run_dir.iterdir()) if p.is_file())}); "
            f"evaluate: capslab eval {run_dir}"
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
