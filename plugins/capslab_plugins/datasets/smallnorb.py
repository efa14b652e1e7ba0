"""``smallnorb``: LeCun, Huang, Bottou's small NORB (2004): 5 toy categories, 24,300 stereo pairs per split.

Training pairs show instances 4, 6, 7, 8, 9 of each category and test pairs instances 0, 1, 2, 3, 5,
each under 6 lightings x 9 elevations x 18 azimuths, at 96x96 from two cameras. Files (NYU binary
matrices, see :mod:`capslab.data.norb`, gzipped or not) are read from ``data_dir`` or the cache and
downloaded from NYU when missing, checked against the MD5s published with torchvision-style loaders
(the .gz and the decompressed files both; ``verify: true`` checks local files). The -info files
(instance, elevation, azimuth, lighting) are not needed for classification and not read.

The CapsNet paper's official smallNORB pipeline (Sabour et al. 2017) resizes 96 -> 48 (``size``), then crops 32x32
at random in training and at the centre in testing (left to the model or trainer). Resizing averages
areas (for 96 -> 48, each output pixel is the mean of a 2x2 block, rounded). ``stereo: true`` keeps both
cameras as 2 channels, ``false`` the first camera only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

import capslab

IDXFile = capslab.data.IDXFile  # the same record: name without .gz, MD5 of the .gz, MD5 decompressed
RAW_SIZE, CLASSES = 96, 5


class SmallNORBParams(capslab.data.IDXParams):
    size: int = Field(48, ge=8, le=RAW_SIZE)  # images resized 96 -> size x size (paper: 48); 96 keeps them
    stereo: bool = True  # both cameras as 2 channels; false: the first camera only


def resize(images: np.ndarray, size: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size) by area averaging.

    In chunks: a float copy of all 24,300 stereo pairs at 96x96 would take 1.8 GB.
    """
    x = torch.from_numpy(np.ascontiguousarray(images))  # (N, C, H, W)
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty(*x.shape[:2], size, size, dtype=torch.uint8)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].float()
        out[start : start + chunk] = F.interpolate(part, size=(size, size), mode="area").round_().to(torch.uint8)
    return out


class SmallNORB(capslab.data.IDXDataset):
    name = "smallnorb"
    Params = SmallNORBParams
    info = capslab.DataInfo(2, 48, 48, CLASSES)  # with the defaults; instances carry their own
    files = {
        "train": (
            IDXFile(
                "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat",
                "66054832f9accfe74a0f4c36a75bc0a2",
                "8138a0902307b32dfa0025a36dfa45ec",
            ),
            IDXFile(
                "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat",
                "23c8b86101fbf0904a000b43d3ed2fd9",
                "fd5120d3f770ad57ebe620eb61a0b633",
            ),
        ),
        "test": (
            IDXFile(
                "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat",
                "e4ad715691ed5a3a5f138751a4ceb071",
                "e9920b7f7b2869a8f1a12e945b2c166c",
            ),
            # the test categories come in the same order as the training ones: same decompressed MD5
            IDXFile(
                "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat",
                "5aa791cd7e6016cf957ce9bdb93b8603",
                "fd5120d3f770ad57ebe620eb61a0b633",
            ),
        ),
    }
    mirrors = ("https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/",)

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        self.info = capslab.DataInfo(2 if p.stereo else 1, p.size, p.size, CLASSES)

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split not in self.files:
            raise capslab.DataError(f"smallnorb has no split {split!r}; use train or test")
        paths = [self.path(f) for f in self.files[split]]  # (-dat, -cat)
        raw = [capslab.data.read_idx_bytes(p) for p in paths]  # read once: verified and parsed from the same bytes
        if self.params.verify:
            for path, data, f in zip(paths, raw, self.files[split]):
                self.check_content(path, data, f)
        images = capslab.data.parse_norb(raw[0], paths[0], ndim=4)  # (N, 2, 96, 96)
        labels = capslab.data.parse_norb(raw[1], paths[1], ndim=1)  # (N,)
        del raw
        if images.dtype != np.uint8 or images.shape[1:] != (2, RAW_SIZE, RAW_SIZE):
            raise capslab.DataError(
                f"{paths[0]}: images are {images.dtype} {images.shape}, expected uint8 "
                f"(N, 2, 96, 96); is this a smallNORB -dat file?"
            )
        labels = capslab.data.as_labels(labels, paths[1], 0, CLASSES - 1, "categories")
        if len(labels) != len(images):
            raise capslab.DataError(
                f"{paths[1]}: {len(labels)} categories for {len(images)} image pairs in "
                f"{paths[0]}; the files come from different releases: download both again"
            )
        images = images if self.params.stereo else images[:, :1]  # (N, C, 96, 96)
        return capslab.Split(resize(images, self.params.size), torch.from_numpy(labels))


@capslab.hookimpl
def register_datasets(register):
    register(SmallNORB)
