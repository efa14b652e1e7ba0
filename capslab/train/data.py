"""Data in memory for training and evaluation: whole splits (cropped for evaluation), the extra test sets, and
batches (shuffled, cropped and shifted for training, composed examples' sources moved with them)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from capslab.build import build_dataset
from capslab.data.augment import centre_crop, random_crop, random_shift
from capslab.data.base import DataInfo, Dataset, Split
from capslab.errors import CapslabError
from capslab.recipe.schema import Recipe


def load_split(dataset: Dataset, split: str, limit: int | None = None, crop: int | None = None) -> Split:
    """A whole split in memory; ``limit`` keeps a prefix (the datasets interleave their classes); ``crop``:
    the central crop x crop of every image, what a model trained on random crops is evaluated on."""
    data = dataset.load(split)  # type: ignore[arg-type]
    if limit is not None and limit < len(data):
        data = data.subset(slice(0, limit))
    if crop is not None:
        sources = centre_crop(data.sources, crop).contiguous() if data.sources is not None else None
        data = Split(centre_crop(data.images, crop).contiguous(), data.labels, sources)
    return data


def extra_test_sets(recipe: Recipe, info: DataInfo) -> dict[str, Split]:
    """The test splits of the recipe's ``test_also`` datasets, by name (cropped like the main test set)."""
    found: dict[str, Split] = {}
    for i, section in enumerate(recipe.test_also):
        ds = build_dataset(section.as_dict())
        if (ds.info.shape, ds.info.num_classes) != (info.shape, info.num_classes):
            raise CapslabError(
                f"test_also[{i}]: {section.name} has images {ds.info.shape} in {ds.info.num_classes} classes, but "
                f"{recipe.data.name}'s model takes {info.shape} in {info.num_classes}; pick a matching dataset"
            )
        found[section.name] = load_split(ds, "test", recipe.train.limit_test, recipe.train.crop)
    return found


def to_float(images: Tensor) -> Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)  # the last, smaller batch is kept: every example is seen each epoch


class Batch(NamedTuple):
    images: Tensor  # (B, C, H, W) float in [0, 1]
    targets: Tensor  # (B,) class indices or (B, J) multi-hot
    sources: Tensor | None  # (B, K, C, H, W) float in [0, 1]: the composed images (Split.sources), or None


def _batch(data: Split, idx: Tensor | slice) -> Batch:
    sources = to_float(data.sources[idx]) if data.sources is not None else None
    return Batch(to_float(data.images[idx]), data.labels[idx], sources)


def train_batches(
    data: Split, batch_size: int, shift: int, generator: torch.Generator, crop: int | None = None
) -> Iterator[Batch]:
    """One epoch of shuffled batches, randomly cropped to ``crop`` px (when given), then shifted by up to
    ``shift`` px; a composed example's sources move with it (the same crop and shift).

    Every random draw comes from ``generator``, whose state the checkpoint saves: resuming is exact.
    """
    order = torch.randperm(len(data), generator=generator)  # (N,)
    for start in range(0, len(data), batch_size):
        images, targets, sources = _batch(data, order[start : start + batch_size])
        B, C = images.shape[:2]
        if sources is not None:  # one image of C * (1 + K) channels, so every part gets the same draw
            images = torch.cat([images, sources.flatten(1, 2)], 1)  # (B, C * (1 + K), H, W)
        if crop is not None:
            images = random_crop(images, crop, generator)
        if shift:
            images = random_shift(images, shift, generator)
        if sources is not None:
            images, sources = images[:, :C], images[:, C:].reshape(B, -1, C, *images.shape[2:])
        yield Batch(images, targets, sources)


def eval_batches(data: Split, batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(data), batch_size):
        yield _batch(data, slice(start, start + batch_size))
