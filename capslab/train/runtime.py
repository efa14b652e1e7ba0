"""What the trainer and the CLI share: seeding, devices, data in memory, batches, building the model."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from capslab.build import build_dataset, build_model
from capslab.data.augment import centre_crop, random_crop, random_shift
from capslab.data.base import DataInfo, Dataset, Split
from capslab.errors import CapslabError
from capslab.models.base import Model
from capslab.recipe.schema import Recipe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also every CUDA device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CapslabError(
            f"train.device: {name!r} asked for, but this torch has no CUDA device; use train.device=auto"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise CapslabError("train.device: 'mps' asked for, but it is not available; use train.device=auto")
    return torch.device(name)


def load_split(dataset: Dataset, split: str, limit: int | None = None, crop: int | None = None) -> Split:
    """A whole split in memory; ``limit`` keeps a prefix (the datasets interleave their classes); ``crop``:
    the central crop x crop of every image, what a model trained on random crops is evaluated on."""
    data = dataset.load(split)  # type: ignore[arg-type]
    if limit is not None and limit < len(data):
        data = Split(data.images[:limit], data.labels[:limit])
    if crop is not None:
        data = Split(centre_crop(data.images, crop).contiguous(), data.labels)
    return data


def input_info(recipe: Recipe, info: DataInfo) -> DataInfo:
    """What the model sees: the dataset's images, or their train.crop x train.crop crops."""
    crop = recipe.train.crop
    if crop is None:
        return info
    if crop > min(info.height, info.width):
        raise CapslabError(
            f"train.crop: {crop} is larger than {recipe.data.name}'s {info.height}x{info.width} images; "
            f"use at most {min(info.height, info.width)}"
        )
    return dataclasses.replace(info, height=crop, width=crop)


def make_model(recipe: Recipe, info: DataInfo) -> Model:
    """The recipe's model for a dataset with ``info`` (the crop size, when the recipe crops)."""
    info = input_info(recipe, info)
    return build_model(recipe.model.as_dict(), info, recipe.routing.as_dict(), recipe.squash.as_dict())


def make_dataset(recipe: Recipe) -> Dataset:
    return build_dataset(recipe.data.as_dict())


def to_float(images: Tensor) -> Tensor:
    """uint8 pixels 0..255 -> float32 in [0, 1]."""
    return images.float().div_(255.0)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)  # the last, smaller batch is kept: every example is seen each epoch


def train_batches(
    data: Split, batch_size: int, shift: int, generator: torch.Generator, crop: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled (images float (B, C, H, W), labels) batches, randomly cropped to ``crop`` px
    (when given), then shifted by up to ``shift`` px.

    Every random draw comes from ``generator``, whose state the checkpoint saves: resuming is exact.
    """
    order = torch.randperm(len(data), generator=generator)  # (N,)
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        images = to_float(data.images[idx])
        if crop is not None:
            images = random_crop(images, crop, generator)
        if shift:
            images = random_shift(images, shift, generator)
        yield images, data.labels[idx]


def eval_batches(data: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(data), batch_size):
        yield to_float(data.images[start : start + batch_size]), data.labels[start : start + batch_size]


def correct(scores: Tensor, targets: Tensor) -> int:
    """Examples whose top-k classes are exactly their k labels (k = 1 for class indices)."""
    if targets.dim() == 1:
        return int((scores.argmax(1) == targets).sum())
    k = int(targets.sum(1).max())
    hits = targets.gather(1, scores.topk(k, dim=1).indices).sum(1)  # (B,) labels among the top k
    return int((hits == targets.sum(1)).sum())
