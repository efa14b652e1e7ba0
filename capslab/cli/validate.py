"""``capslab validate RECIPE [key=value ...]``: check a recipe (and build its model) without training."""

from __future__ import annotations

import sys
from typing import Annotated

import torch
import typer

from capslab.cli.common import out, user_errors
from capslab.errors import CapslabError
from capslab.recipe import RecipeError, dump_recipe, find_recipe, load_recipe
from capslab.train.setup import available_memory, check_fits, make_dataset, make_model, memory_needed, resolve_device


@user_errors
def validate(
    recipe: Annotated[str, typer.Argument(help="recipe file, or an embedded recipe's name (quickstart, mnist)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.path=value overrides", show_default=False)] = None,
    show: Annotated[bool, typer.Option("--show", help="print the resolved recipe (every default filled in)")] = False,
) -> None:
    """Check a recipe: schema, plugin names and parameters, and that its model builds."""
    path = find_recipe(recipe)
    r = load_recipe(path, overrides or [])
    try:
        info = make_dataset(r).info
        with torch.device("meta"):  # shapes only: no memory, no time
            model = make_model(r, info)
    except (CapslabError, ValueError) as exc:
        raise RecipeError(
            f"{path}: model: cannot build {r.model.name!r} with {r.routing.name!r} routing: {exc}"
        ) from None
    params = sum(p.numel() for p in model.parameters())
    check_fits(r, info)
    need, have = memory_needed(params), available_memory(resolve_device(r.train.device))
    if need > have:
        raise RecipeError(
            f"{path}: model: {params / 1e6:,.0f}M parameters need at least {need / 2**30:,.1f} GiB to train (weights, "
            f"gradients, Adam), more than this machine's {have / 2**30:,.1f} GiB; make the model smaller"
        )
    out.print(
        f"{path}: OK: {r.model.name} ({params / 1e6:.2f}M parameters) with {r.routing.name} routing "
        f"({r.routing.params.get('iterations', '-')} iterations) on {r.data.name}, {r.train.epochs} epochs "
        f"of batch {r.train.batch_size}"
    )
    if show:
        dump_recipe(r, sys.stdout)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
