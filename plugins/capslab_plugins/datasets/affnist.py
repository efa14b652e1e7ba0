"""``affnist`` and ``expanded_mnist``: the CapsNet paper's robustness-to-affine-transformations test.

Sabour, Frosst, Hinton 2017 (Sec. 5.2) train on *expanded MNIST*, MNIST digits placed at random on a
40x40 black background, and test on affNIST (Tieleman 2013): the 10,000 MNIST test digits,
each under 32 random affine transformations, 40x40. At matched expanded-MNIST test accuracy (99.23% vs
99.22%) CapsNet scores 79% on affNIST and a CNN 66%.

``expanded_mnist``: each digit of a base dataset (default ``mnist5k``) zero-padded by ``pad`` and shifted
by up to ``shift`` px in x and y, zero fill (official code: ``--shift=6 --pad=6``, 28 -> 40). The official
code writes every shift in [-shift, shift]^2 of every digit (``copies: all``, 169 per digit: memory!);
the default draws ``copies`` random shifts per digit, fixed by ``seed``.

``affnist``: train split = the train split of the ``train`` section (default ``expanded_mnist``), test split =
with ``variant: generated``, ``copies`` affine transformations of each test digit of ``base`` (default
``mnist5k``) within affNIST's ranges (rotation within 20 degrees, shear within 0.2, scale 0.8 to 1.2,
translated anywhere the digit stays inside the 40x40 frame), deterministic for ``seed``, so the protocol runs
without the real files; otherwise affNIST's ``test.mat`` in ``data_dir/<variant>/`` (``transformed``: 320,000
images; the paper's test set; ``just_centered``: the 10,000 digits padded to 40x40), unzipped from
``test.mat.zip``, which is downloaded from Tieleman's page when missing. The .mat holds a 1x1 struct
``affNISTdata`` with ``image`` uint8 (1600, N), one image per column, read row by row as the common loaders
read it (not checked against the real file here), and ``label_int`` (1, N) 0..9. No published checksum of the
affNIST files could be found (neither torchvision nor tensorflow_datasets ships affNIST, and the GitHub
loaders give none), so downloads are not checked by hash; the content is checked instead.
"""

from __future__ import annotations

import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

import capslab

SIDE = 40  # affNIST images are 40x40


def all_shifts(images: Tensor, m: int) -> Tensor:
    """Every shift (dx, dy) in [-m, m]^2 of each image, zero fill: (N, C, H, W) -> ((2m+1)^2 N, C, H, W).

    Shift-major: out[k N + n] is image n moved by the k-th (dy, dx); out[y, x] = in[y - dy, x - dx].
    """
    h, w = images.shape[-2:]
    padded = F.pad(images, (m, m, m, m))  # (N, C, H + 2m, W + 2m)
    return torch.cat(
        [padded[..., m - dy : m - dy + h, m - dx : m - dx + w] for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    )


class ExpandedMNISTParams(capslab.DatasetParams):
    base: str | dict[str, Any] = "mnist5k"  # the base dataset's section: a name or {name: ..., **params}
    pad: int = Field(6, ge=0)  # canvas = digit + 2 * pad per side (official code: 6, 28 -> 40)
    shift: int = Field(6, ge=0)  # max shift of each digit in px, each direction (official code: 6)
    copies: Annotated[int, Field(ge=1)] | Literal["all"] = 1  # random shifts per digit, or all (official code)
    seed: int = 0  # fixes the shifts, independently of the training seed


class ExpandedMNIST(capslab.Dataset):
    name = "expanded_mnist"
    Params = ExpandedMNISTParams
    info = capslab.DataInfo(1, SIDE, SIDE, 10)  # with the defaults; instances carry their own

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        self.base = capslab.data.single_label_base(p.base, p.data_dir, "expanded_mnist")
        b = self.base.info
        self.info = capslab.DataInfo(b.channels, b.height + 2 * p.pad, b.width + 2 * p.pad, b.num_classes)

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split not in ("train", "test"):
            raise capslab.DataError(f"expanded_mnist has no split {split!r}; use train or test")
        p, base = self.params, self.base.load(split)
        canvas = F.pad(base.images, (p.pad,) * 4)  # (N, C, H + 2 pad, W + 2 pad)
        if p.copies == "all":
            return capslab.Split(all_shifts(canvas, p.shift), base.labels.repeat((2 * p.shift + 1) ** 2))
        generator = torch.Generator().manual_seed(2 * p.seed + (split == "test"))  # one stream per split
        images = capslab.data.random_shift(canvas.repeat(p.copies, 1, 1, 1), p.shift, generator)
        return capslab.Split(images, base.labels.repeat(p.copies))


def parse_affnist(mat: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """loadmat's dict -> (images uint8 (N, 1, 40, 40), labels int64 (N,))."""
    image = capslab.data.struct_field(mat, path, "affNISTdata", "image")  # (1600, N)
    if image.ndim != 2 or image.shape[0] != SIDE * SIDE:
        raise capslab.DataError(
            f"{path}: affNISTdata.image has shape {image.shape}, expected (1600, N); is this an affNIST 40x40 file?"
        )
    images = np.ascontiguousarray(capslab.data.as_pixels(image, path).T).reshape(-1, 1, SIDE, SIDE)
    labels = capslab.data.as_labels(capslab.data.struct_field(mat, path, "affNISTdata", "label_int"), path, 0, 9)
    if len(labels) != len(images):
        raise capslab.DataError(f"{path}: {len(labels)} labels for {len(images)} images; download the file again")
    return images, labels


def extract(archive: Path, member: str, target: Path) -> Path:
    """Unzip ``member`` of ``archive`` to ``target``; a partial file never takes target's name."""
    part = target.with_name(target.name + ".part")
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]  # top level or a folder
            if not names:
                raise capslab.DataError(f"{archive}: no member {member!r}; is this affNIST's test.mat.zip?")
            with zf.open(names[0]) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # reading to the end checks the CRC
        os.replace(part, target)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise capslab.DataError(
            f"{archive}: corrupt or truncated zip ({exc}); delete it and download it again"
        ) from exc
    except OSError as exc:
        raise capslab.DataError(
            f"{target}: cannot unzip {archive} there ({exc.strerror or exc}); unzip it "
            f"yourself or set data_dir to a writable directory"
        ) from exc
    finally:
        part.unlink(missing_ok=True)
    return target


class AffNISTParams(capslab.data.FileParams):
    # the test set: affNIST's "transformed" (the paper's) or "just_centered" files, or "generated" offline
    variant: Literal["transformed", "just_centered", "generated"] = "transformed"
    train: str | dict[str, Any] = "expanded_mnist"  # dataset whose train split trains (paper: expanded MNIST)
    # variant generated: affine copies of this dataset's test digits, ``copies`` each (affNIST: 32), fixed by seed
    base: str | dict[str, Any] = "mnist5k"
    copies: int = Field(1, ge=1)
    seed: int = 0


# affNIST's ranges (Tieleman 2013): rotation within 20 degrees, shear within 0.2, scale 0.8 to 1.2 per axis,
# then a translation that keeps the digit inside the 40x40 frame
ROTATION_DEG, SHEAR, SCALE = 20.0, 0.2, (0.8, 1.2)


def affine_digits(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each 28x28 digit (N, C, 28, 28) uint8 under its own random affNIST-range transformation, on a 40x40
    canvas: centred (padded by 6), rotated, sheared and scaled about the centre (bilinear), then moved by a
    random whole-pixel translation that keeps its ink inside the frame. Deterministic for the generator."""
    n, c, h, w = images.shape
    canvas = F.pad(images.float(), ((SIDE - w) // 2, (SIDE - w + 1) // 2, (SIDE - h) // 2, (SIDE - h + 1) // 2))
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)  # rotation, shear, scale x, scale y, spare
    angle = (2 * u[:, 0] - 1) * ROTATION_DEG * torch.pi / 180
    shear = (2 * u[:, 1] - 1) * SHEAR
    sx, sy = (SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, k] for k in (2, 3))
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (N, 2, 2)
    shr = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
    shr[:, 0, 1] = shear
    scl = torch.diag_embed(torch.stack([sx, sy], -1))
    forward = rot @ shr @ scl  # (N, 2, 2): input -> output, about the centre
    theta = torch.cat([torch.linalg.inv(forward), torch.zeros(n, 2, 1, dtype=torch.float64)], -1)  # output -> input
    grid = F.affine_grid(theta.float(), (n, c, SIDE, SIDE), align_corners=False)
    warped = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = warped.round().clamp(0, 255).to(torch.uint8)  # (N, C, 40, 40)
    ink = warped.amax(1) > 0  # (N, 40, 40)
    rows, cols = ink.any(2), ink.any(1)  # (N, 40) each
    idx = torch.arange(SIDE)
    top = torch.where(rows, idx, SIDE).amin(1)
    bottom = torch.where(rows, idx, -1).amax(1)
    left = torch.where(cols, idx, SIDE).amin(1)
    right = torch.where(cols, idx, -1).amax(1)
    empty = bottom < 0  # no ink: leave in place
    top, bottom, left, right = (
        torch.where(empty, d, t) for t, d in ((top, 0), (bottom, SIDE - 1), (left, 0), (right, SIDE - 1))
    )
    t = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    dy = (-top + (t[:, 0] * (SIDE - bottom + top)).floor().long()).clamp(
        max=SIDE - 1 - bottom
    )  # in [-top, 39 - bottom]
    dx = (-left + (t[:, 1] * (SIDE - right + left)).floor().long()).clamp(max=SIDE - 1 - right)
    return capslab.data.shift_images(warped, dx, dy)


class AffNIST(capslab.data.FileDataset):
    name = "affnist"
    Params = AffNISTParams
    info = capslab.DataInfo(1, SIDE, SIDE, 10)
    mirrors = ("https://www.cs.toronto.edu/~tijmen/affNIST/32x/", "http://www.cs.toronto.edu/~tijmen/affNIST/32x/")

    def __init__(self, **params):
        super().__init__(**params)
        if self.params.verify:
            raise capslab.DataError(
                "affnist: no published checksum of the affNIST files is known, so verify "
                "cannot check them; set verify: false"
            )
        section = self.params.train
        self.train_dataset = capslab.build_dataset(section)
        if self.train_dataset.info != self.info:
            raise capslab.DataError(
                f"affnist trains on {section!r}, whose images are {self.train_dataset.info}; affNIST "
                f"needs {self.info}: for expanded_mnist keep 28 + 2 * pad = 40"
            )

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split == "train":
            return self.train_dataset.load("train")
        if split != "test":
            raise capslab.DataError(f"affnist has no split {split!r}; use train or test")
        p = self.params
        if p.variant == "generated":
            base = capslab.data.single_label_base(p.base, p.data_dir, "affnist").load("test")
            if base.images.shape[1:] != (1, 28, 28):
                raise capslab.DataError(
                    f"affnist: base {p.base!r} has images {tuple(base.images.shape[1:])}; "
                    f"the generated variant transforms 28x28 digits"
                )
            generator = torch.Generator().manual_seed(p.seed)
            images = affine_digits(base.images.repeat(p.copies, 1, 1, 1), generator)
            return capslab.Split(images, base.labels.repeat(p.copies))
        mat_path = self.directory() / self.params.variant / "test.mat"
        if not mat_path.is_file():
            archive = self.path(capslab.data.ReleaseFile(f"{self.params.variant}/test.mat.zip", None))
            extract(archive, "test.mat", mat_path)
        images, labels = parse_affnist(capslab.data.read_mat(mat_path, ("affNISTdata",)), mat_path)
        return capslab.Split(torch.from_numpy(images), torch.from_numpy(labels))


@capslab.hookimpl
def register_datasets(register):
    register(AffNIST)
    register(ExpandedMNIST)
