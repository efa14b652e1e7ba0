"""``svhn``: Street View House Numbers, cropped digits (Netzer et al. 2011): 73,257 train / 26,032 test, 32x32 RGB.

Reads the "format 2" files ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB level 5, read with scipy):
``X`` uint8 (32, 32, 3, N) as (row, column, channel, image) and ``y`` (N, 1) labels 1..10, where 10 is
the digit 0. Missing files are downloaded from Stanford and checked against torchvision's MD5s
(train e26dedcc434d2e4c54c9b2d4a06d8373, test eb5a983be6a315427106f1b164d9cef3). The ``extra`` set
(531,131 more images) is not used: the CapsNet paper trains on the 73,257 training images.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

import capslab

ReleaseFile = capslab.data.ReleaseFile


def parse_svhn(mat: dict, path) -> tuple[np.ndarray, np.ndarray]:
    """loadmat's dict -> (images uint8 (N, 3, 32, 32), labels int64 (N,) with 0..9)."""
    x = np.asarray(mat["X"])
    if x.ndim == 3:  # MATLAB drops a trailing singleton dimension: a file of one image
        x = x[..., None]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise capslab.DataError(
            f"{path}: X has shape {x.shape}, expected (32, 32, 3, N); is this the cropped-digits (32x32) file?"
        )
    images = np.ascontiguousarray(capslab.data.as_pixels(x, path).transpose(3, 2, 0, 1))  # (N, 3, 32, 32)
    labels = capslab.data.as_labels(mat["y"], path, 1, 10) % 10  # 10 is the digit 0
    if len(labels) != len(images):
        raise capslab.DataError(
            f"{path}: {len(labels)} labels in y for {len(images)} images in X; download the file again"
        )
    return images, labels


class SVHN(capslab.data.FileDataset):
    name = "svhn"
    info = capslab.DataInfo(3, 32, 32, 10)
    files = {
        "train": ReleaseFile("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        "test": ReleaseFile("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    }
    mirrors = ("http://ufldl.stanford.edu/housenumbers/",)

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split not in self.files:
            raise capslab.DataError(f"svhn has no split {split!r}; use train or test")
        path = self.path(self.files[split])
        images, labels = parse_svhn(capslab.data.read_mat(path, ("X", "y")), path)
        return capslab.Split(torch.from_numpy(images), torch.from_numpy(labels))


@capslab.hookimpl
def register_datasets(register):
    register(SVHN)
