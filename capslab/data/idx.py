"""IDX files (LeCun's MNIST format) and :class:`IDXDataset`, the base of the MNIST-format dataset plugins.

IDX layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64), the number of dimensions, then one big-endian uint32 per dimension and the data, big-endian,
in C order. MNIST images are ``0x00000803`` (N, 28, 28) and labels ``0x00000801`` (N,). Files may be
gzipped; the reader goes by the gzip magic bytes, not the extension.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
import torch

from capslab.data.base import Dataset, DatasetParams, Split
from capslab.data.download import cache_dir, fetch
from capslab.errors import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(t).newbyteorder("=").str[1:]: c for c, t in IDX_TYPES.items()}  # 'u1' -> 0x08, ...
GZIP_MAGIC = b"\x1f\x8b"


def read_idx_bytes(path: str | Path) -> bytes:
    """The file's IDX bytes, decompressed when it is gzipped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from exc
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # a cut-off download ends the gzip stream early
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc}); delete it and download it again") from exc


def parse_idx(data: bytes, path: str | Path = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into an array in native byte order; ``ndim`` is checked when given."""
    head = data[:4]
    magic = f"0x{head.hex()}" if head else "(empty file)"
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES or head[3] == 0:
        raise DataError(
            f"{path}: not an IDX file (magic number {magic}, expected e.g. 0x00000803 for "
            f"images or 0x00000801 for labels); re-download it or point data_dir at the standard files"
        )
    dims = head[3]
    if ndim is not None and dims != ndim:
        raise DataError(
            f"{path}: IDX file has {dims} dimensions (magic {magic}), expected {ndim} "
            f"(magic 0x{0x800 + ndim:08x}); are the image and label files swapped?"
        )
    header = 4 + 4 * dims
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes); delete it and download it again")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", dims, 4))
    return matrix_payload(data, header, shape, np.dtype(IDX_TYPES[head[2]]), path)


def matrix_payload(data: bytes, header: int, shape: tuple[int, ...], dtype: np.dtype, path: str | Path) -> np.ndarray:
    """The array after a ``header``-byte header (IDX, NORB), in native byte order; DataError if the
    payload is not exactly ``shape`` of ``dtype``."""
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        problem = "truncated" if len(data) - header < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(data) - header}; delete it and download it again"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or raw); malformed files raise :class:`capslab.DataError`."""
    return parse_idx(read_idx_bytes(path), path, ndim)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``compress`` (default: the name ends in .gz)."""
    path, array = Path(path), np.asarray(array)
    code = _CODES.get(array.dtype.str[1:])
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}; use one of {sorted(_CODES)}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(IDX_TYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)  # mtime 0: the same array gives the same bytes
    path.write_bytes(data)
    return path


def load_idx_split(images_path: str | Path, labels_path: str | Path) -> Split:
    """An (images (N, H, W), labels (N,)) IDX pair -> ``Split(uint8 (N, 1, H, W), int64 (N,))``."""
    return idx_split(read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1), images_path, labels_path)


def idx_split(images: np.ndarray, labels: np.ndarray, images_path: str | Path, labels_path: str | Path) -> Split:
    """Check and convert parsed IDX arrays (the images' memory is shared); the paths name the files in errors."""
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}; "
            f"the two files come from different releases: download both again"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: images are {images.dtype}, expected uint8 (type code 0x08)")
    # parse_idx returns fresh writable arrays: share their memory instead of copying 47 MB again
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


class IDXFile(NamedTuple):
    name: str  # standard name without .gz, e.g. 'train-images-idx3-ubyte'
    md5: str  # of the published gzipped file (what a download is checked against)
    content_md5: str  # of the decompressed file (independent of how it was gzipped)


class IDXParams(DatasetParams):
    download: bool = True  # fetch missing files (checked against known MD5s) into data_dir or the cache
    verify: bool = False  # also check local files against the official release (MD5 of the decompressed bytes)


class IDXDataset(Dataset):
    """A dataset of four IDX files; subclasses name the files, their MD5s and the download mirrors.

    Files are looked up, gzipped or not, in ``data_dir`` when given, else in the first of
    ``system_dirs`` that holds them all, else in the cache (``$CAPSLAB_DATA/<name>``); missing ones are
    downloaded there when ``download`` is true.
    """

    Params = IDXParams
    files: ClassVar[dict[str, tuple[IDXFile, IDXFile]]]  # split -> (images, labels)
    mirrors: ClassVar[tuple[str, ...]]  # base URLs ending in '/', tried in order
    system_dirs: ClassVar[tuple[str, ...]] = ()

    def directory(self) -> Path:
        """Where the files are read from (and downloaded to)."""
        if self.params.data_dir:
            return Path(self.params.data_dir).expanduser()
        wanted = [f for pair in self.files.values() for f in pair]
        for d in map(Path, self.system_dirs):
            if all(self._find(d, f) for f in wanted):
                return d
        return cache_dir(self.name)

    @staticmethod
    def _find(directory: Path, f: IDXFile) -> Path | None:
        for candidate in (directory / f"{f.name}.gz", directory / f.name):
            if candidate.is_file():
                return candidate
        return None

    def path(self, f: IDXFile) -> Path:
        """The local file for ``f``, downloaded first when missing and allowed."""
        directory = self.directory()
        found = self._find(directory, f)
        if found is not None:
            return found
        if not self.params.download:
            raise DataError(
                f"{directory / f.name}[.gz] not found; put the {self.name} files in {directory} or set download: true"
            )
        gz = f"{f.name}.gz"
        return fetch(gz, [m + gz for m in self.mirrors], f"md5:{f.md5}", directory)

    def check_content(self, path: Path, data: bytes, f: IDXFile) -> None:
        """``data``, the decompressed bytes of ``path``, must be the official release's."""
        digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if digest != f.content_md5:
            raise DataError(
                f"{path}: checksum mismatch (decompressed MD5 {digest}, the official {self.name} "
                f"release has {f.content_md5}); replace the file, or set verify: false to use it"
            )

    def load(self, split: Literal["train", "test"]) -> Split:
        if split not in self.files:
            raise DataError(f"{self.name} has no split {split!r}; use one of {', '.join(self.files)}")
        paths = [self.path(f) for f in self.files[split]]
        raw = [read_idx_bytes(p) for p in paths]  # read once: verified and parsed from the same bytes
        if self.params.verify:
            for path, content, f in zip(paths, raw, self.files[split]):
                self.check_content(path, content, f)
        data = idx_split(parse_idx(raw[0], paths[0], 3), parse_idx(raw[1], paths[1], 1), *paths)
        if tuple(data.images.shape[1:]) != self.info.shape:
            raise DataError(
                f"{paths[0]}: images are {tuple(data.images.shape[2:])}, {self.name} expects "
                f"{self.info.height}x{self.info.width}; point data_dir at the {self.name} files"
            )
        low, high = (int(data.labels.min()), int(data.labels.max())) if len(data) else (0, 0)
        if low < 0 or high >= self.info.num_classes:
            raise DataError(
                f"{paths[1]}: labels range {low}..{high}, {self.name} has classes "
                f"0..{self.info.num_classes - 1}; point data_dir at the {self.name} files"
            )
        return data
