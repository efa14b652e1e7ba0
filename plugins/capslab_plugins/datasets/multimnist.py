"""``multimnist``: two overlapping digits per image (Sabour, Frosst, Hinton 2017, Sec. 6), built on the fly.

Each digit of a base split (default ``mnist5k``) is paired with ``pairs_per_digit`` digits of a different
class from the same split, drawn uniformly. Both are zero-padded by ``pad`` (28 -> 36) and shifted
independently by up to ``shift`` px in x and y (paper: 4; the official code's README: 6, which can cut
digit edges), then merged pixel-wise with min(a + b, 255). Labels are multi-hot (N, J) with two ones.
Deterministic given ``seed`` (train and test draw from different streams). The paper uses 1,000 pairs
per digit (60M training images); here the whole split is built in memory, so keep N x pairs modest.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

import capslab


class MultiMNISTParams(capslab.DatasetParams):
    base: str | dict[str, Any] = "mnist5k"  # the base dataset's section: a name or {name: ..., **params}
    shift: int = Field(4, ge=0)  # max shift of each digit in px, each direction (paper: 4; official code: 6)
    pad: int = Field(4, ge=0)  # canvas = digit + 2 * pad per side (paper: 28 -> 36)
    pairs_per_digit: int = Field(1, ge=1)  # partners per base digit (paper: 1000)
    seed: int = 0  # fixes the pairs and the shifts, independently of the training seed


def compose(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    pairs_per_digit: int,
    shift: int,
    pad: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Overlay pairs of digits of different classes.

    images (N, C, H, W) uint8, labels (N,) int -> (merged (M, C, H + 2 pad, W + 2 pad) uint8, multi-hot
    (M, J) int64, first (M,), second (M,), sources (M, 2, C, H + 2 pad, W + 2 pad) uint8) with
    M = N * pairs_per_digit; first/second index the base; sources are the two shifted digits as placed on the
    canvas, the lower class first (what each per-digit reconstruction is held to).
    """
    n = len(labels)
    counts = torch.bincount(labels, minlength=num_classes)  # (J,)
    if n == 0 or (counts == n).any():
        raise capslab.DataError(f"multimnist needs digits of at least two classes, got class counts {counts.tolist()}")
    first = torch.arange(n).repeat_interleave(pairs_per_digit)  # (M,)
    # partner: uniform over the digits of other classes. In class-sorted order the first digit's class is
    # one block [start, start + count); draw r in [0, n - count) and step over that block.
    order = torch.argsort(labels, stable=True)  # (N,)
    starts = torch.cumsum(counts, 0) - counts  # (J,)
    own = labels[first]  # (M,)
    others = n - counts[own]  # (M,)
    r = (torch.rand(len(first), generator=generator, dtype=torch.float64) * others).long().clamp_max(others - 1)
    r = torch.where(r >= starts[own], r + counts[own], r)
    second = order[r]  # (M,)
    pair = torch.cat([images[first], images[second]])  # (2M, C, H, W): one shift draw each
    canvas = F.pad(pair, (pad, pad, pad, pad))  # (2M, C, H + 2p, W + 2p)
    shifted = capslab.data.random_shift(canvas, shift, generator).to(torch.int16)
    a, b = shifted[: len(first)], shifted[len(first) :]  # (M, C, H', W') each
    merged = (a + b).clamp_max(255).to(torch.uint8)
    hot = torch.zeros(len(first), num_classes, dtype=torch.int64)
    hot[torch.arange(len(first)), labels[first]] = 1
    hot[torch.arange(len(first)), labels[second]] = 1
    swap = (labels[first] > labels[second]).view(-1, 1, 1, 1)  # (M, 1, 1, 1): the lower class first
    sources = torch.stack([torch.where(swap, b, a), torch.where(swap, a, b)], 1).to(torch.uint8)  # (M, 2, C, H', W')
    return merged, hot, first, second, sources


class MultiMNIST(capslab.Dataset):
    name = "multimnist"
    Params = MultiMNISTParams
    info = capslab.DataInfo(1, 36, 36, 10, multi_label=True, sources=2)  # the defaults; instances carry their own

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        self.base = capslab.data.single_label_base(p.base, p.data_dir, "multimnist")
        b = self.base.info
        self.info = capslab.DataInfo(
            b.channels, b.height + 2 * p.pad, b.width + 2 * p.pad, b.num_classes, multi_label=True, sources=2
        )

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split not in ("train", "test"):
            raise capslab.DataError(f"multimnist has no split {split!r}; use train or test")
        p = self.params
        base = self.base.load(split)
        generator = torch.Generator().manual_seed(2 * p.seed + (split == "test"))  # one stream per split
        images, labels, _, _, sources = compose(
            base.images, base.labels, self.info.num_classes, p.pairs_per_digit, p.shift, p.pad, generator
        )
        return capslab.Split(images, labels, sources)


@capslab.hookimpl
def register_datasets(register):
    register(MultiMNIST)
