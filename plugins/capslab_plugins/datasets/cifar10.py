"""``cifar10``: Krizhevsky's CIFAR-10 (50,000 training and 10,000 test colour images, 32x32, 10 classes).

Reads the python release, ``cifar-10-python.tar.gz`` (MD5 c58f30108f718f92721af3b95e74349a, as in
torchvision), straight from the tarball, or from its extracted ``cifar-10-batches-py/`` directory when
that is in ``data_dir``. Each batch is a pickled dict: ``data`` uint8 (10000, 3072), one row per image,
the red, green and blue 32x32 planes in turn (so a row reshapes to (3, 32, 32)), and ``labels``, 10,000
ints 0..9. Training is data_batch_1..5 in order, test is test_batch. The pickles are read with an
unpickler that only builds numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

import capslab

ReleaseFile = capslab.data.ReleaseFile
FOLDER = "cifar-10-batches-py"
# MD5s of the extracted batches (torchvision's), checked with verify: true
BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# what pickled numpy arrays need (numpy 1 and 2 module names; _codecs.encode: bytes in protocol 2)
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 renamed numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core." + module[11:]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def parse_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images uint8 (n, 3, 32, 32), labels int64 (n,)); ``where`` names it in errors."""
    try:
        # latin1: the release was pickled by Python 2, whose str holds both keys and bytes
        batch = ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # pickle raises many types for garbage
        raise capslab.DataError(
            f"{where}: not a CIFAR batch pickle ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:100]}); download the release again"
        ) from exc
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise capslab.DataError(
            f"{where}: expected a dict with 'data' and 'labels', got {keys}; is this "
            f"CIFAR-10 (CIFAR-100 has 'fine_labels')?"
        )
    images = np.asarray(batch["data"])
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise capslab.DataError(
            f"{where}: 'data' has shape {images.shape}, expected (N, 3072); download the release again"
        )
    images = capslab.data.as_pixels(images, where).reshape(-1, 3, 32, 32)  # (n, 3, 32, 32): R, G, B planes
    labels = capslab.data.as_labels(batch["labels"], where, 0, 9)
    if len(labels) != len(images):
        raise capslab.DataError(f"{where}: {len(labels)} labels for {len(images)} images; download the release again")
    return images, labels


def read_tar_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """The bytes of ``FOLDER/<name>`` for each name, in one pass over the gzipped tarball."""
    wanted, found = {f"{FOLDER}/{n}": n for n in names}, {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise capslab.DataError(
            f"{path}: corrupt or truncated tar.gz ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:100]}); delete it and download it again"
        ) from exc
    missing = [n for n in names if n not in found]
    if missing:
        raise capslab.DataError(f"{path}: no member {FOLDER}/{missing[0]}; is this cifar-10-python.tar.gz?")
    return found


class CIFAR10(capslab.data.FileDataset):
    name = "cifar10"
    info = capslab.DataInfo(3, 32, 32, 10)
    archive = ReleaseFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
    mirrors = ("https://www.cs.toronto.edu/~kriz/",)

    def raw_batches(self, names: list[str]) -> dict[str, tuple[bytes, str]]:
        """name -> (pickled bytes, where they came from): the extracted folder first, else the tarball."""
        folder = self.directory() / FOLDER
        if all((folder / n).is_file() for n in names):
            raw = {n: ((folder / n).read_bytes(), str(folder / n)) for n in names}
            if self.params.verify:
                for n, (data, where) in raw.items():
                    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
                    if digest != BATCHES[n]:
                        raise capslab.DataError(
                            f"{where}: checksum mismatch (MD5 {digest}, the official release "
                            f"has {BATCHES[n]}); replace it, or set verify: false to use it"
                        )
            return raw
        path = self.path(self.archive)
        return {n: (data, f"{path}:{FOLDER}/{n}") for n, data in read_tar_members(path, names).items()}

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split not in SPLITS:
            raise capslab.DataError(f"cifar10 has no split {split!r}; use train or test")
        raw = self.raw_batches(SPLITS[split])
        parts = [parse_batch(*raw[n]) for n in SPLITS[split]]
        images = np.concatenate([p[0] for p in parts])  # (N, 3, 32, 32)
        labels = np.concatenate([p[1] for p in parts])  # (N,)
        return capslab.Split(torch.from_numpy(images), torch.from_numpy(labels))


@capslab.hookimpl
def register_datasets(register):
    register(CIFAR10)
