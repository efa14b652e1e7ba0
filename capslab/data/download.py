"""Downloads through pooch, checked against known hashes, into capslab's data cache.

The cache is ``$CAPSLAB_DATA`` when set, else the platform's user cache directory
(``pooch.os_cache("capslab")``, e.g. ``~/.cache/capslab`` on Linux). Every failure is one
:class:`capslab.DataError` line naming the file, the URL and what to do instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pooch
import pooch.downloaders

from capslab.errors import DataError

CACHE_ENV = "CAPSLAB_DATA"


def cache_dir(name: str | None = None) -> Path:
    """capslab's data cache, or its subdirectory ``name``."""
    root = Path(os.environ.get(CACHE_ENV) or pooch.os_cache("capslab")).expanduser()
    return root / name if name else root


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())  # one line, whatever the library put in the message
    if len(text) > 100:  # requests nests whole exception reprs: the start says what went wrong
        text = text[:100] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fetch(
    fname: str,
    urls: str | Sequence[str],
    known_hash: str | None,
    directory: str | Path,
    downloader: Callable | None = None,
) -> Path:
    """Download ``fname`` into ``directory`` from the first of ``urls`` that works.

    ``known_hash`` is ``"md5:<hex>"``, ``"sha256:<hex>"`` or None (no check); a file already there with that hash is
    not downloaded again. ``downloader`` replaces pooch's choice (tests pass one that copies a file).
    """
    directory = Path(directory).expanduser()
    urls = [urls] if isinstance(urls, str) else list(urls)
    failures = []
    for url in urls:
        try:
            get = downloader or pooch.downloaders.choose_downloader(url)
        except ValueError as exc:  # a protocol pooch cannot fetch
            failures.append(f"{url}: {_reason(exc)}")
            continue
        try:
            return Path(pooch.retrieve(url, known_hash, fname=fname, path=directory, downloader=get))
        except ValueError:  # with the downloader already chosen, pooch raises ValueError only for a bad hash
            failures.append(f"{url}: checksum mismatch (expected {known_hash}; the download was deleted)")
        except Exception as exc:  # network, HTTP and disk errors differ by downloader: all end the same way
            failures.append(f"{url}: {_reason(exc)}")
    raise DataError(
        f"{directory / fname}: download failed ({'; '.join(failures)}); check the network and retry, or "
        f"download {fname} yourself into {directory} (or set data_dir to a directory that holds it)"
    )
