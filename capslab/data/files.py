"""Datasets published as a few files (a tarball, .mat files): find them locally or download them, checked.

:class:`FileDataset` looks each :class:`ReleaseFile` up in ``data_dir`` (else in the cache,
``$CAPSLAB_DATA/<name>``) and downloads missing ones there when ``download`` is true, checked against the
MD5 of the official release. ``verify: true`` also checks files that were already there. A release
without a published checksum (``md5=None``) is downloaded unchecked: its parser must check the content.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import ClassVar, NamedTuple

from capslab.data.base import Dataset, DatasetParams
from capslab.data.download import cache_dir, fetch
from capslab.errors import DataError


class ReleaseFile(NamedTuple):
    name: str  # path relative to the data directory and to each mirror, e.g. 'transformed/test.mat.zip'
    md5: str | None  # of the published file; None where no public checksum is known


class FileParams(DatasetParams):
    download: bool = True  # fetch missing files (checked against the official MD5s) into data_dir or the cache
    verify: bool = False  # also check files already there against the official MD5s


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """MD5 of a file, read in chunks (release files are hundreds of MB)."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check the path and permissions") from exc
    return digest.hexdigest()


class FileDataset(Dataset):
    """Base of datasets read from release files; subclasses name the files and the mirrors."""

    Params = FileParams
    mirrors: ClassVar[tuple[str, ...]]  # base URLs ending in '/', tried in order

    def directory(self) -> Path:
        """Where the files are read from (and downloaded to)."""
        if self.params.data_dir:
            return Path(self.params.data_dir).expanduser()
        return cache_dir(self.name)

    def path(self, f: ReleaseFile) -> Path:
        """The local file for ``f``: found, or downloaded when missing and allowed."""
        path = self.directory() / f.name
        if path.is_file():
            if self.params.verify:
                self.check(path, f)
            return path
        if not self.params.download:
            raise DataError(f"{path} not found; put the {self.name} files in {self.directory()} or set download: true")
        rel = PurePosixPath(f.name)
        known = f"md5:{f.md5}" if f.md5 else None  # None: pooch downloads without a check
        return fetch(rel.name, [m + f.name for m in self.mirrors], known, path.parent)

    def check(self, path: Path, f: ReleaseFile) -> None:
        """``path`` must be the official release's ``f`` (by MD5)."""
        if f.md5 is None:
            raise DataError(
                f"{path}: no published checksum is known for {f.name}, so verify cannot check it; set verify: false"
            )
        digest = md5_file(path)
        if digest != f.md5:
            raise DataError(
                f"{path}: checksum mismatch (MD5 {digest}, the official {self.name} release has "
                f"{f.md5}); delete it to download it again, or set verify: false to use it"
            )
