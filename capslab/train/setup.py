"""What a run is built from: seeds, the device and its memory, the dataset and the model for the images the
model sees (crops), and the checks that a recipe fits them."""

from __future__ import annotations

import dataclasses
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from capslab.build import build_dataset, build_model
from capslab.data.base import DataInfo, Dataset
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
    if name.startswith("cuda:") and int(name.split(":")[1]) >= torch.cuda.device_count():
        raise CapslabError(
            f"train.device: {name!r}, but this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 ..); "
            f"use train.device=auto or cuda:0"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise CapslabError("train.device: 'mps' asked for, but it is not available; use train.device=auto")
    return torch.device(name)


def memory_needed(params: int) -> int:
    """Bytes that training a model of ``params`` float32 parameters takes at least: weights, gradients and
    Adam's two moments (activations come on top)."""
    return 16 * params


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def make_dataset(recipe: Recipe) -> Dataset:
    return build_dataset(recipe.data.as_dict())


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


def check_fits(recipe: Recipe, info: DataInfo) -> None:
    """One line for settings that pass the schema but make no sense for these images."""
    side = min(info.height, info.width)
    if recipe.train.shift >= side:
        raise CapslabError(
            f"train.shift: {recipe.train.shift} px moves every {info.height}x{info.width} image out of frame; "
            f"use less than {side} (the paper: 2)"
        )


def device_name(device: torch.device) -> str:
    """What a run ran on, for results tables: the GPU's model, or the CPU's model name and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"{device.type}: {model}"
