"""Dataset plugins hand the trainer whole splits as in-memory tensors (MNIST-sized data fits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from capslab.params import Component, Params


@dataclass(frozen=True)
class DataInfo:
    channels: int
    height: int
    width: int
    num_classes: int
    multi_label: bool = False  # targets are multi-hot (B, J), e.g. MultiMNIST

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class Split:
    images: Tensor  # (N, C, H, W) uint8, pixels 0..255
    labels: Tensor  # (N,) int64 class indices, or (N, J) multi-hot

    def __len__(self) -> int:
        return int(self.images.shape[0])


class DatasetParams(Params):
    data_dir: str | None = None  # where the files are, or are downloaded to; None: the plugin's default


class Dataset(Component):
    """Base class of dataset plugins: ``info`` and ``load(split)``."""

    Params: ClassVar[type[Params]] = DatasetParams
    info: ClassVar[DataInfo]

    def __init__(self, **params):
        self.params = self.validate_params(params)

    def load(self, split: Literal["train", "test"]) -> Split:
        raise NotImplementedError
