"""The data an analysis runs on: the checkpoint's own dataset, or another one of the same shape."""

from __future__ import annotations

from capslab.data.base import Split
from capslab.errors import DataError
from capslab.recipe import Recipe, parse_recipe
from capslab.train.data import load_split
from capslab.train.setup import make_dataset


def checkpoint_split(
    recipe: Recipe,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    limit: int | None = None,
) -> Split:
    """``split`` of the recipe's dataset (or ``dataset`` / ``data_dir``), checked to fit the trained model."""
    if split not in ("train", "test"):
        raise DataError(f"--split: {split!r}; use train or test")
    data = recipe.to_dict()
    if dataset is not None:
        data["data"] = {"name": dataset}
    if data_dir is not None:
        data["data"]["data_dir"] = data_dir
    here = parse_recipe(data, "--dataset/--data-dir")
    ds = make_dataset(here)
    trained_on = make_dataset(recipe).info
    if (ds.info.shape, ds.info.num_classes) != (trained_on.shape, trained_on.num_classes):
        raise DataError(
            f"--dataset {here.data.name}: images {ds.info.shape} in {ds.info.num_classes} classes, "
            f"but the checkpoint's model takes {trained_on.shape} in {trained_on.num_classes}"
        )
    return load_split(ds, split, limit, recipe.train.crop)
