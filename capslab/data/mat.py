"""MATLAB .mat files (level 5, as SVHN and affNIST publish them) read with scipy, one-line errors.

scipy is imported on first use: only the datasets that read .mat files need it (``pip install scipy``,
part of ``capslab[data]``). MATLAB v7.3 files are HDF5, which ``scipy.io.loadmat`` cannot read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capslab.errors import DataError


def read_mat(path: str | Path, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The variables of a .mat file as loadmat gives them (2-D at least, structs as (1, 1) records).

    ``names`` are the variables that must be there; a missing one is a :class:`capslab.DataError`.
    """
    path = Path(path)
    try:
        import scipy.io
    except ImportError as exc:
        raise DataError(
            f"{path}: reading .mat files needs scipy, which is not installed: pip install scipy "
            f"(or pip install 'capslab[data]')"
        ) from exc
    if not path.is_file():
        raise DataError(f"{path}: not found; check data_dir")
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # scipy's answer to v7.3 (HDF5) files
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) file, scipy reads only v4-v7.2; re-save it with "
            f"save(..., '-v7') or download the official file again"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # scipy raises ValueError, TypeError, OSError, zlib.error... for broken files
        reason = " ".join(str(exc).split())[:100]
        raise DataError(
            f"{path}: not a readable .mat file ({type(exc).__name__}: {reason}); delete it and download it again"
        ) from exc
    missing = [n for n in names if n not in mat]
    if missing:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise DataError(f"{path}: no variable {missing[0]!r} (variables: {found}); is this the right file?")
    return mat


def struct_field(mat: dict[str, Any], path: str | Path, struct: str, field: str) -> np.ndarray:
    """Field ``field`` of the 1x1 struct variable ``struct`` (as loadmat returns it by default)."""
    value = mat[struct]
    names = value.dtype.names or ()
    if field not in names or value.size != 1:
        raise DataError(
            f"{path}: {struct!r} is not a 1x1 struct with a field {field!r} (fields: "
            f"{', '.join(names) or 'none'}); is this the right file?"
        )
    return np.asarray(value[field].flat[0])
