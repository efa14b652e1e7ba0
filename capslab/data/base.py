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
    sources: int = 0  # images composed into each example, each with its own label (MultiMNIST: 2); 0: none

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class Split:
    images: Tensor  # (N, C, H, W) uint8, pixels 0..255
    labels: Tensor  # (N,) int64 class indices, or (N, J) multi-hot
    # (N, K, C, H, W) uint8: the K images composed into each example, each as placed on the canvas, in
    # ascending order of their classes (MultiMNIST's two digits: what each per-digit reconstruction is held to)
    sources: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Tensor | slice) -> Split:
        """The examples at ``index`` (a slice or an index tensor), sources included."""
        sources = self.sources[index] if self.sources is not None else None
        return Split(self.images[index], self.labels[index], sources)


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


def single_label_base(base: str | dict, data_dir: str | None, who: str) -> Dataset:
    """The one-digit dataset that ``who`` (multimnist, expanded_mnist) builds on; data_dir is the base's."""
    from capslab.build import build_dataset
    from capslab.errors import DataError

    section = {"name": base} if isinstance(base, str) else dict(base)
    if data_dir is not None:
        section.setdefault("data_dir", data_dir)
    dataset = build_dataset(section)
    if dataset.info.multi_label:
        raise DataError(f"{who} base {section['name']!r} is multi-label; use a one-digit dataset")
    return dataset
