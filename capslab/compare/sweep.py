"""A comparison recipe: a base experiment, variants and a grid over recipe keys, and seeds.

    # capslab compare recipes/compare/routing.yaml [--jobs 2]
    base: quickstart            # a recipe file (relative to this file), an embedded name, or a mapping
    set: [train.epochs=2]       # overrides applied to every run
    variants:                   # optional: one entry per variant, each a label plus overrides
      - {label: dynamic-3, routing: {name: dynamic, iterations: 3}, paper: "0.25 ± 0.005"}
      - {label: em, routing: em, model.primary_dim: 16}
    grid:                       # optional: the product of these values (dotted recipe keys)
      routing.iterations: [1, 3]
    seeds: [0, 1, 2]

Runs = variants x grid x seeds; every run's recipe is validated before any run starts. A variant's
``paper`` (text) is the published number it reproduces, shown beside the measured one. Overrides given to
``load_compare`` (the command line's KEY=VALUE) apply to every run after ``set``, before each variant's own.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from capslab.params import Params
from capslab.recipe import COMPONENTS, Recipe, RecipeError, find_recipe, parse_recipe, read_yaml
from capslab.recipe.loader import Locator
from capslab.recipe.overrides import OVERRIDE, Problem


class CompareSpec(Params):
    base: str | dict[str, Any] = "quickstart"
    set: list[str] = []
    variants: list[dict[str, Any]] = []
    grid: dict[str, list[Any]] = {}
    seeds: list[int] = Field([0], min_length=1)


@dataclass
class PlannedRun:
    variant: str
    seed: int
    recipe: Recipe
    paper: str = ""  # the published number this variant reproduces (the variant's ``paper`` key)

    @property
    def key(self) -> str:
        return f"{slug(self.variant)}/seed-{self.seed}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "base"


def override(key: str, value: Any) -> str:
    """key=value with the value as YAML flow (JSON is YAML 1.2); ``routing: em`` -> ``{name: em}`` so that
    later overrides of ``routing.<param>`` have a section to go into."""
    if key in COMPONENTS and isinstance(value, str):
        value = {"name": value}
    return f"{key}={json.dumps(value)}"


def _label_part(key: str, value: Any) -> str:
    parts = key.split(".")
    name = parts[0] if parts[-1] == "name" and len(parts) == 2 else parts[-1]
    return f"{name}={value if not isinstance(value, (dict, list)) else json.dumps(value)}"


def variant_overrides(spec: CompareSpec) -> list[tuple[str, list[str], str, int]]:
    """(label, overrides, paper, index of the variant in ``variants``) for each variant x grid point."""
    variants = spec.variants or [{}]
    keys = list(spec.grid)
    points = list(itertools.product(*(spec.grid[k] for k in keys))) or [()]
    out = []
    for index, variant in enumerate(variants):
        v = dict(variant)
        paper = str(v.pop("paper", ""))
        label = str(v.pop("label", "")) or ", ".join(_label_part(k, x) for k, x in v.items())
        for point in points:
            grid_label = ", ".join(_label_part(k, x) for k, x in zip(keys, point))
            full = ", ".join(filter(None, [label, grid_label])) or "base"
            overrides = [override(k, x) for k, x in v.items()] + [override(k, x) for k, x in zip(keys, point)]
            out.append((full, overrides, paper, index))
    return out


def blame(problem: str, own: list[str], common: list[str], index: int, at: Locator) -> str:
    """A problem that a variant's or ``set``'s override caused, placed at that entry of the comparison file
    (the recipe loader only knows it came from an override)."""
    if not isinstance(problem, Problem) or problem.source != OVERRIDE:
        return problem
    for entries, loc in ((own, None), (common, "set")):
        for j, entry in enumerate(entries):
            entry_key = entry.split("=", 1)[0]
            if problem.key == entry_key or problem.key.startswith(entry_key + "."):
                return problem.moved(*at.position(("variants", index) if loc is None else ("set", j)))
    return problem


def load_compare(
    path: str | Path, overrides: list[str] | None = None, seeds: list[int] | None = None
) -> list[PlannedRun]:
    """Read and validate a comparison recipe; RecipeError lists every problem of every run."""
    path = Path(path)
    data, positions = read_yaml(path)
    at = Locator(str(path), positions)
    try:
        spec = CompareSpec.model_validate(data or {})
    except ValidationError as exc:
        raise RecipeError([at.problem(tuple(e["loc"]), e["msg"]) for e in exc.errors()]) from None
    if isinstance(spec.base, dict):
        base, base_pos, source = spec.base, {("base",) + k: v for k, v in positions.items()}, f"{path} (base)"
    else:
        local = path.parent / spec.base
        base_path = local if local.is_file() else find_recipe(spec.base)
        base, base_pos = read_yaml(base_path)
        source = str(base_path)
    runs: list[PlannedRun] = []
    problems: list[str] = []
    labels: set[str] = set()
    for label, own, paper, index in variant_overrides(spec):
        if label in labels:
            problems.append(at.problem(("variants",), f"two variants are both labelled {label!r}; give each a label"))
            continue
        labels.add(label)
        for seed in seeds or spec.seeds:
            try:
                recipe = parse_recipe(
                    json.loads(json.dumps(base)),
                    source,
                    [*spec.set, *(overrides or []), *own, f"seed={seed}"],
                    base_pos if not isinstance(spec.base, dict) else None,
                )
            except RecipeError as exc:
                problems += [f"{blame(p, own, spec.set, index, at)} (variant {label!r})" for p in exc.problems]
                break
            runs.append(PlannedRun(label, seed, recipe, paper))
    if problems:
        raise RecipeError(problems)
    return runs
