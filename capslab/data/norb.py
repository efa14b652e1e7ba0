"""NYU's binary matrix format (the NORB datasets' ``*.mat`` files; not MATLAB files).

Layout (LeCun and Huang, norb-v1.0-small README), every integer little-endian: a 4-byte magic number
giving the element type (0x1E3D4C55 uint8, 0x1E3D4C54 int32, 0x1E3D4C56 int16, 0x1E3D4C51 float32,
0x1E3D4C53 float64), the number of dimensions n as int32, then max(n, 3) int32 sizes (unused ones are 1),
then the data, little-endian, in C order. smallNORB's ``-dat`` files are uint8 (N, 2, 96, 96) stereo
pairs, ``-cat`` files int32 (N,) classes 0..4, ``-info`` files int32 (N, 4). Files may be gzipped; the
reader goes by the gzip magic bytes, as the IDX reader does.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from capslab.data.idx import matrix_payload, read_idx_bytes
from capslab.errors import DataError

NORB_TYPES = {0x1E3D4C55: "<u1", 0x1E3D4C54: "<i4", 0x1E3D4C56: "<i2", 0x1E3D4C51: "<f4", 0x1E3D4C53: "<f8"}
_MAGICS = {np.dtype(t).newbyteorder("=").str[1:]: m for m, t in NORB_TYPES.items()}  # 'u1' -> 0x1E3D4C55
MAX_DIMS = 16  # a larger count means the file is not a binary matrix


def parse_norb(data: bytes, path: str | Path = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse binary-matrix bytes into an array in native byte order; ``ndim`` is checked when given."""
    magic = int.from_bytes(data[:4], "little") if len(data) >= 4 else None
    if magic not in NORB_TYPES:
        shown = f"0x{magic:08X}" if magic is not None else "(file shorter than 4 bytes)"
        raise DataError(
            f"{path}: not a NORB binary matrix (magic number {shown}, expected e.g. 0x1E3D4C55 for "
            f"images or 0x1E3D4C54 for labels); re-download it or point data_dir at the standard files"
        )
    dims = int.from_bytes(data[4:8], "little", signed=True) if len(data) >= 8 else -1
    if not 0 < dims <= MAX_DIMS:
        raise DataError(
            f"{path}: truncated or corrupt NORB header (dimension count {dims}); delete it and download it again"
        )
    if ndim is not None and dims != ndim:
        raise DataError(
            f"{path}: NORB matrix has {dims} dimensions, expected {ndim}; are the -dat, -cat and -info files mixed up?"
        )
    header = 8 + 4 * max(dims, 3)
    if len(data) < header:
        raise DataError(f"{path}: truncated NORB header ({len(data)} bytes); delete it and download it again")
    shape = tuple(int(d) for d in np.frombuffer(data, "<i4", dims, 8))
    if min(shape) < 0:
        raise DataError(f"{path}: corrupt NORB header (shape {shape}); delete it and download it again")
    return matrix_payload(data, header, shape, np.dtype(NORB_TYPES[magic]), path)


def read_norb(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read a NORB binary matrix file (gzipped or raw); malformed files raise :class:`capslab.DataError`."""
    return parse_norb(read_idx_bytes(path), path, ndim)


def write_norb(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as a NORB binary matrix, gzipped when ``compress`` (default: the name ends in .gz)."""
    path, array = Path(path), np.asarray(array)
    magic = _MAGICS.get(array.dtype.str[1:])
    if magic is None or not 0 < array.ndim <= MAX_DIMS:
        raise ValueError(
            f"a NORB matrix holds 1..{MAX_DIMS} dimensions of {sorted(_MAGICS)}, got {array.ndim} of {array.dtype}"
        )
    dims = list(array.shape) + [1] * (3 - array.ndim)  # at least three size fields, unused ones 1
    header = np.asarray([magic, array.ndim], "<u4").tobytes() + np.asarray(dims, "<i4").tobytes()
    data = header + array.astype(NORB_TYPES[magic]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return path
