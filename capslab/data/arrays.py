"""Checks that turn arrays parsed from release files into Split-ready pixels and labels, or one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capslab.errors import DataError


def as_pixels(array: np.ndarray, path: str | Path, what: str = "images") -> np.ndarray:
    """Pixels 0..255 as uint8, whatever integer or float type the file stored them in."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise DataError(f"{path}: {what} are not finite numbers (dtype {array.dtype}); is this the right file?")
    if array.size and (array.min() < 0 or array.max() > 255 or (array != np.round(array)).any()):
        raise DataError(
            f"{path}: {what} are not pixels 0..255 (range {array.min()}..{array.max()}); is this the right file?"
        )
    return array.astype(np.uint8)


def as_labels(array, path: str | Path, low: int, high: int, what: str = "labels") -> np.ndarray:
    """Labels as int64 (N,), every value in low..high."""
    labels = np.asarray(array).reshape(-1)
    if labels.dtype.kind not in "iuf" or (labels.size and (labels != np.round(labels)).any()):
        raise DataError(f"{path}: {what} are not integers (dtype {labels.dtype}); is this the right file?")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < low or labels.max() > high):
        raise DataError(
            f"{path}: {what} range {labels.min()}..{labels.max()}, expected {low}..{high}; is this the right file?"
        )
    return labels
