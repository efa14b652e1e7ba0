"""The recipes that ship with capslab: ``recipes/`` in a source tree, ``capslab/recipes/`` in a wheel."""

from __future__ import annotations

from pathlib import Path

from capslab.errors import did_you_mean
from capslab.recipe.loader import RecipeError

DEFAULT = "quickstart"


def recipes_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "recipes"  # force-included into the wheel
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "recipes"  # editable install / source checkout


def embedded_recipes() -> dict[str, Path]:
    folder = recipes_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def find_recipe(name_or_path: str | Path | None = None) -> Path:
    """A recipe file by path, or an embedded recipe by name (``quickstart``); None: the default."""
    if name_or_path is None:
        name_or_path = DEFAULT
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.yaml"))[:5]
        inside = f"; recipes in it: {', '.join(found)}" if found else ""
        raise RecipeError(f"{name_or_path}: is a directory, not a recipe file{inside}")
    known = embedded_recipes()
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and path.stem in known:
        return known[path.stem]
    hint = did_you_mean(str(name_or_path), [*known, *map(str, Path(".").glob("*.yaml"))])
    names = ", ".join(known) or "(none found)"
    raise RecipeError(f"{name_or_path}: recipe file not found{hint}; embedded recipes: {names}")
