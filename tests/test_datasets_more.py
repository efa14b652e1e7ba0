"""CIFAR-10, SVHN, smallNORB, affNIST and expanded MNIST on tiny files in the real formats (never the network)."""

from __future__ import annotations

import gzip
import io
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pooch.downloaders
import pytest
import torch
from test_datasets import LocalServer, md5, one_line_error

import capslab
from capslab.data import ReleaseFile, parse_norb, read_norb, write_norb
from capslab_plugins.datasets import affnist, cifar10, smallnorb

RNG = np.random.default_rng(0)


def savemat(path: Path, variables: dict) -> None:
    """scipy writes the MATLAB level-5 files (SVHN and affNIST tests need it, like the datasets do)."""
    pytest.importorskip("scipy.io").savemat(path, variables)


def serve(monkeypatch, tmp_path, files: dict[str, Path]) -> LocalServer:
    """Every download goes to a LocalServer of ``files``; the cache is under tmp_path."""
    server = LocalServer(files)
    monkeypatch.setattr(pooch.downloaders, "choose_downloader", lambda url, progressbar=False: server)
    monkeypatch.setenv("CAPSLAB_DATA", str(tmp_path / "cache"))
    return server


def load_error(section: dict, split: str = "test", *parts: str) -> str:
    with pytest.raises(capslab.DataError) as excinfo:
        capslab.build_dataset(section).load(split)
    return one_line_error(excinfo, *parts)


# ---------------------------------------------------------------- CIFAR-10


def cifar_batches(n=3, keys=str) -> dict[str, dict]:
    return {
        name: {
            keys("data"): RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
            keys("labels"): [int(v) for v in RNG.integers(0, 10, n)],
            keys("batch_label"): name,
        }
        for name in cifar10.BATCHES
    }


def write_cifar_tar(path: Path, batches: dict, protocol=2, skip=()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            if name in skip:
                continue
            data = batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=protocol)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("protocol", "keys"), [(2, str), (5, str), (2, lambda k: k.encode())], ids=["protocol2", "protocol5", "bytes-keys"]
)
def test_cifar10_reads_the_python_tarball(tmp_path, protocol, keys):
    batches = cifar_batches(keys=keys)
    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches, protocol)
    ds = capslab.build_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False})
    assert ds.info == capslab.DataInfo(3, 32, 32, 10)
    train, test = ds.load("train"), ds.load("test")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 3, 32, 32) and test.labels.dtype == torch.int64
    rows = np.concatenate([batches[f"data_batch_{i}"][keys("data")] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][keys("labels")] for i in range(1, 6)), [])
    assert train.labels.tolist() == labels  # batches 1..5 in order
    # row layout: 1024 red, 1024 green, 1024 blue values, each plane row by row
    n, c, y, x = 7, 2, 5, 30
    assert int(train.images[n, c, y, x]) == rows[n, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(test.images.flatten(1).numpy(), batches["test_batch"][keys("data")])


def test_cifar10_reads_pickles_that_name_numpy_1_modules():
    """The release was pickled with numpy 1 (numpy.core.multiarray); numpy 2 calls it numpy._core."""
    batch = cifar_batches()["test_batch"]
    data = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    images, labels = cifar10.parse_batch(data, "test_batch")
    np.testing.assert_array_equal(images.reshape(3, -1), batch["data"])
    assert labels.tolist() == batch["labels"]


def test_cifar10_reads_the_extracted_folder_and_verifies_it(tmp_path):
    batches = cifar_batches()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    test = capslab.build_dataset({"name": "cifar10", "data_dir": str(tmp_path), "download": False}).load("test")
    np.testing.assert_array_equal(test.images.flatten(1).numpy(), batches["test_batch"]["data"])
    load_error(
        {"name": "cifar10", "data_dir": str(tmp_path), "verify": True},
        "test",
        str(folder / "test_batch"),
        "checksum mismatch",
        "40351d587109b95175f43aff81a1287e",
        "verify: false",
    )


def test_cifar10_refuses_pickles_that_would_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batches = cifar_batches()
    batches["test_batch"] = pickle.dumps({"data": Evil()})
    path = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches)
    load_error(
        {"name": "cifar10", "data_dir": str(tmp_path)},
        "test",
        f"{path}:cifar-10-batches-py/test_batch",
        "refusing to load builtins.print",
    )


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        (b"not a pickle", "not a CIFAR batch pickle"),
        ({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [1, 2]}, "CIFAR-100 has 'fine_labels'"),
        ({"data": np.zeros((2, 1024), np.uint8), "labels": [1, 2]}, "shape (2, 1024), expected (N, 3072)"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}, "labels range 1..10, expected 0..9"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}, "1 labels for 2 images"),
    ],
    ids=["garbage", "cifar100", "shape", "label-range", "count"],
)
def test_cifar10_malformed_batches(tmp_path, batch, expected):
    batches = cifar_batches()
    batches["test_batch"] = batch
    path = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", batches)
    load_error(
        {"name": "cifar10", "data_dir": str(tmp_path)}, "test", f"{path}:cifar-10-batches-py/test_batch", expected
    )


def test_cifar10_truncated_or_incomplete_tarball(tmp_path):
    path = write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_batches(), skip=("data_batch_3",))
    section = {"name": "cifar10", "data_dir": str(tmp_path)}
    load_error(section, "train", str(path), "no member cifar-10-batches-py/data_batch_3")
    path.write_bytes(path.read_bytes()[:-200])
    load_error(section, "test", str(path), "corrupt or truncated tar.gz", "download it again")
    path.unlink()
    load_error({**section, "download": False}, "test", str(path), "not found", "download: true")


def test_cifar10_download_is_checked_against_the_known_md5(tmp_path, monkeypatch):
    fake = write_cifar_tar(tmp_path / "fake.tar.gz", cifar_batches())
    server = serve(monkeypatch, tmp_path, {"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": fake})
    load_error(
        {"name": "cifar10"},
        "test",
        "cifar-10-python.tar.gz",
        "checksum mismatch",
        "md5:c58f30108f718f92721af3b95e74349a",
    )
    assert len(server.requests) == 1 and not (tmp_path / "cache" / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_cifar10_downloads_a_release_it_can_check(tmp_path, monkeypatch):
    """A subclass whose 'official release' is the tiny tarball served here: downloaded once, checked, read."""
    served = write_cifar_tar(tmp_path / "served.tar.gz", cifar_batches())

    class TinyCIFAR(cifar10.CIFAR10):
        archive = ReleaseFile("cifar-10-python.tar.gz", md5(served))

    server = serve(monkeypatch, tmp_path, {"https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz": served})
    assert len(TinyCIFAR(data_dir=str(tmp_path / "d")).load("test")) == 3
    assert len(TinyCIFAR(data_dir=str(tmp_path / "d"), verify=True).load("train")) == 15
    assert len(server.requests) == 1  # found locally the second time


# ---------------------------------------------------------------- SVHN


def write_svhn(path: Path, n=4, labels=None) -> tuple[np.ndarray, np.ndarray]:
    x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # (row, column, channel, image)
    y = np.asarray(labels if labels is not None else np.arange(n) % 10 + 1, np.uint8).reshape(n, 1)
    savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path):
    x, _ = write_svhn(tmp_path / "test_32x32.mat", labels=[10, 1, 9, 10])
    ds = capslab.build_dataset({"name": "svhn", "data_dir": str(tmp_path), "download": False})
    assert ds.info == capslab.DataInfo(3, 32, 32, 10)
    test = ds.load("test")
    assert test.images.shape == (4, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == [0, 1, 9, 0]
    assert int(test.images[2, 1, 3, 17]) == x[3, 17, 1, 2]  # images[n, c, h, w] = X[h, w, c, n]
    np.testing.assert_array_equal(test.images.numpy(), x.transpose(3, 2, 0, 1))


def test_svhn_malformed_files(tmp_path):
    path, section = tmp_path / "test_32x32.mat", {"name": "svhn", "data_dir": str(tmp_path)}
    path.write_bytes(b"garbage" * 20)
    load_error(section, "test", str(path), "not a readable .mat file")
    savemat(path, {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    load_error(section, "test", str(path), "X has shape (28, 28, 1, 2), expected (32, 32, 3, N)")
    savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    load_error(section, "test", str(path), "no variable 'y'", "variables: X")
    write_svhn(path, n=2, labels=[0, 3])
    load_error(section, "test", str(path), "labels range 0..3, expected 1..10")
    data = bytearray(path.read_bytes())
    data[124:126] = (0x0200).to_bytes(2, "little")  # the header of a v7.3 (HDF5) file
    path.write_bytes(bytes(data))
    load_error(section, "test", str(path), "MATLAB v7.3")


def test_svhn_without_scipy_says_how_to_install_it(tmp_path, monkeypatch):
    write_svhn(tmp_path / "train_32x32.mat")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io now raises ImportError
    load_error({"name": "svhn", "data_dir": str(tmp_path)}, "train", "pip install scipy")


def test_svhn_checksums(tmp_path, monkeypatch):
    write_svhn(tmp_path / "test_32x32.mat")
    load_error(
        {"name": "svhn", "data_dir": str(tmp_path), "verify": True},
        "test",
        str(tmp_path / "test_32x32.mat"),
        "checksum mismatch",
        "eb5a983be6a315427106f1b164d9cef3",
    )
    fake = tmp_path / "fake.mat"
    write_svhn(fake)
    server = serve(monkeypatch, tmp_path, {"http://ufldl.stanford.edu/housenumbers/train_32x32.mat": fake})
    load_error(
        {"name": "svhn"},
        "train",
        "train_32x32.mat",
        "checksum mismatch",
        "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
        "http://ufldl.stanford.edu/housenumbers/",
    )
    assert len(server.requests) == 1


# ---------------------------------------------------------------- NORB binary matrices and smallNORB


@pytest.mark.parametrize("name", ["m.mat", "m.mat.gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 2 * 3 * 4, dtype=np.uint8).reshape(2, 2, 3, 4),
        np.array([4, 0, 70000, -1], np.int32),
        np.arange(6, dtype=np.int32).reshape(3, 2),
        np.array([-3, 4], np.int16),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(1, 2, 3),
        np.array([1.5, -2.25]),
    ],
    ids=["uint8-4d", "int32-1d", "int32-2d", "int16", "float32-3d", "float64"],
)
def test_norb_round_trip(tmp_path, name, array):
    path = write_norb(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_norb(path)
    assert back.dtype == array.dtype and back.shape == array.shape and back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_norb_header_layout(tmp_path):
    """Little-endian magic and sizes; at least three size fields, unused ones 1 (the -cat files' layout)."""
    data = write_norb(tmp_path / "cat.mat", np.array([2, 0, 4], np.int32)).read_bytes()
    assert data[:20] == bytes.fromhex("544c3d1e01000000030000000100000001000000") and len(data) == 32
    images = write_norb(tmp_path / "dat.mat", np.zeros((5, 2, 96, 96), np.uint8)).read_bytes()
    assert images[:24] == bytes.fromhex("554c3d1e0400000005000000020000006000000060000000")
    np.testing.assert_array_equal(parse_norb(data, ndim=1), [2, 0, 4])


NORB_GOOD = np.asarray([0x1E3D4C55, 2, 2, 3, 1], "<u4").tobytes() + bytes(6)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "(file shorter than 4 bytes)"),
        (b"\x00\x00\x08\x03" + NORB_GOOD[4:], "magic number 0x03080000"),
        (NORB_GOOD[:6], "truncated or corrupt NORB header"),
        (NORB_GOOD[:14], "truncated NORB header (14 bytes)"),
        (NORB_GOOD[:-1], "truncated: header says shape (2, 3) (6 bytes of data) but the file holds 5"),
        (NORB_GOOD + b"\x00", "has trailing bytes"),
    ],
    ids=["empty", "bad-magic", "short-count", "short-sizes", "truncated", "trailing"],
)
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_malformed_norb_is_a_one_line_data_error(tmp_path, data, expected, gz):
    path = tmp_path / "bad-dat.mat"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(capslab.DataError) as excinfo:
        read_norb(path)
    one_line_error(excinfo, str(path), expected)


def write_smallnorb(directory: Path, split="test", n=4, gz=True, categories=None) -> np.ndarray:
    stem = {"train": "smallnorb-5x46789x9x18x6x2x96x96-training", "test": "smallnorb-5x01235x9x18x6x2x96x96-testing"}[
        split
    ]
    images = RNG.integers(0, 256, (n, 2, 96, 96), dtype=np.uint8)
    cats = np.asarray(categories if categories is not None else np.arange(n) % 5, np.int32)
    ext = ".gz" if gz else ""
    write_norb(directory / f"{stem}-dat.mat{ext}", images)
    write_norb(directory / f"{stem}-cat.mat{ext}", cats)
    return images


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_smallnorb_reads_resizes_and_picks_cameras(tmp_path, gz):
    images = write_smallnorb(tmp_path, gz=gz)
    ds = capslab.build_dataset({"name": "smallnorb", "data_dir": str(tmp_path), "download": False})
    assert ds.info == capslab.DataInfo(2, 48, 48, 5)
    test = ds.load("test")
    assert test.images.shape == (4, 2, 48, 48) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == [0, 1, 2, 3]
    blocks = images.reshape(4, 2, 48, 2, 48, 2).astype(np.float64).mean((3, 5))  # each output: a 2x2 mean
    assert np.abs(test.images.numpy() - blocks).max() <= 0.5
    full = capslab.build_dataset({"name": "smallnorb", "data_dir": str(tmp_path), "size": 96, "stereo": False})
    assert full.info == capslab.DataInfo(1, 96, 96, 5)
    np.testing.assert_array_equal(full.load("test").images.numpy(), images[:, :1])  # the first camera, unchanged


def test_smallnorb_resize_of_a_constant_block_is_exact():
    images = np.zeros((1, 1, 96, 96), np.uint8)
    images[0, 0, 10:20, 30:40] = 200
    out = smallnorb.resize(images, 48)
    assert out.shape == (1, 1, 48, 48) and int(out.sum()) == 200 * 25 and int(out[0, 0, 5, 15]) == 200


def test_smallnorb_malformed_files(tmp_path):
    section = {"name": "smallnorb", "data_dir": str(tmp_path)}
    write_smallnorb(tmp_path, categories=[0, 1, 5, 2])
    cat = tmp_path / "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat.gz"
    dat = tmp_path / "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz"
    load_error(section, "test", str(cat), "categories range 0..5, expected 0..4")
    write_norb(cat, np.zeros(3, np.int32))
    load_error(section, "test", str(cat), "3 categories for 4 image pairs", str(dat))
    write_norb(cat, np.zeros((4, 1), np.int32))
    load_error(section, "test", str(cat), "2 dimensions, expected 1", "mixed up")
    write_norb(cat, np.zeros(4, np.int32))
    write_norb(dat, np.zeros((4, 2, 32, 32), np.uint8))
    load_error(section, "test", str(dat), "expected uint8 (N, 2, 96, 96)")
    with pytest.raises(Exception, match="size"):
        capslab.build_dataset({**section, "size": 100})


def test_smallnorb_checksums(tmp_path, monkeypatch):
    write_smallnorb(tmp_path)
    load_error(
        {"name": "smallnorb", "data_dir": str(tmp_path), "verify": True},
        "test",
        "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat.gz",
        "checksum mismatch",
        "e9920b7f7b2869a8f1a12e945b2c166c",
    )
    fake = write_norb(tmp_path / "fake.gz", np.zeros((1, 2, 96, 96), np.uint8))
    url = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat.gz"
    server = serve(monkeypatch, tmp_path, {url: fake})
    load_error({"name": "smallnorb"}, "train", "checksum mismatch", "md5:66054832f9accfe74a0f4c36a75bc0a2", url)
    assert server.requests == [url]


# ---------------------------------------------------------------- affNIST and expanded MNIST


def write_affnist_mat(path: Path, n=5) -> tuple[np.ndarray, np.ndarray]:
    image = RNG.integers(0, 256, (1600, n), dtype=np.uint8)  # one 40x40 image per column
    labels = (np.arange(n) * 3 % 10).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"affNISTdata": {"image": image, "label_int": labels[None], "label_one_of_n": np.eye(10)[labels].T}})
    return image, labels


def write_affnist_zip(path: Path, member="test.mat", n=5):
    buffer = io.BytesIO()
    arrays = write_affnist_mat(path.parent / "src.mat", n)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(path.parent / "src.mat", member)
    (path.parent / "src.mat").unlink()
    path.write_bytes(buffer.getvalue())
    return arrays


def test_affnist_reads_the_test_mat_and_trains_on_expanded_mnist(tmp_path):
    image, labels = write_affnist_mat(tmp_path / "transformed" / "test.mat")
    ds = capslab.build_dataset({"name": "affnist", "data_dir": str(tmp_path), "download": False})
    assert ds.info == capslab.DataInfo(1, 40, 40, 10)
    test = ds.load("test")
    assert test.images.shape == (5, 1, 40, 40) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == labels.tolist()
    assert int(test.images[3, 0, 2, 7]) == image[2 * 40 + 7, 3]  # each column read row by row
    train = ds.load("train")
    assert train.images.shape == (4000, 1, 40, 40) and train.labels.tolist()[:10] == list(range(10))


def test_affnist_unzips_and_downloads_without_a_checksum(tmp_path, monkeypatch):
    write_affnist_zip(tmp_path / "just_centered" / "test.mat.zip", member="just_centered/test.mat")  # in a folder
    section = {"name": "affnist", "data_dir": str(tmp_path), "variant": "just_centered", "download": False}
    assert len(capslab.build_dataset(section).load("test")) == 5
    assert (tmp_path / "just_centered" / "test.mat").is_file()  # unzipped once, next to the archive
    served = tmp_path / "served.zip"
    _, labels = write_affnist_zip(served, n=3)
    server = serve(
        monkeypatch, tmp_path, {"http://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip": served}
    )
    test = capslab.build_dataset("affnist").load("test")
    assert test.labels.tolist() == labels.tolist()
    assert server.requests == [
        "https://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip",
        "http://www.cs.toronto.edu/~tijmen/affNIST/32x/transformed/test.mat.zip",
    ]
    assert sorted(p.name for p in (tmp_path / "cache" / "affnist" / "transformed").iterdir()) == [
        "test.mat",
        "test.mat.zip",
    ]


def test_affnist_malformed_files(tmp_path):
    section = {"name": "affnist", "data_dir": str(tmp_path)}
    archive = tmp_path / "transformed" / "test.mat.zip"
    archive.parent.mkdir()
    write_affnist_zip(archive, member="training.mat")
    load_error(section, "test", str(archive), "no member 'test.mat'")
    archive.write_bytes(b"PK\x03\x04 truncated")
    load_error(section, "test", str(archive), "corrupt or truncated zip")
    mat = tmp_path / "transformed" / "test.mat"
    savemat(mat, {"images": np.zeros((1600, 2), np.uint8)})
    load_error(section, "test", str(mat), "no variable 'affNISTdata'")
    savemat(mat, {"affNISTdata": {"image": np.zeros((784, 2), np.uint8), "label_int": [[1, 2]]}})
    load_error(section, "test", str(mat), "shape (784, 2), expected (1600, N)")
    savemat(mat, {"affNISTdata": {"image": np.zeros((1600, 2), np.uint8)}})
    load_error(section, "test", str(mat), "field 'label_int'")
    with pytest.raises(capslab.DataError, match="no published checksum"):
        capslab.build_dataset({**section, "verify": True})
    with pytest.raises(capslab.DataError, match="28 \\+ 2 \\* pad = 40"):
        capslab.build_dataset({**section, "train": {"name": "expanded_mnist", "pad": 4}})


def naive_shift(image: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(C, H, W) moved right by dx and down by dy, zero fill, with slices."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_all_shifts_enumerates_every_shift_once():
    images = torch.randint(1, 256, (3, 2, 5, 6), dtype=torch.uint8)
    out = affnist.all_shifts(images, 2)
    assert out.shape == (25 * 3, 2, 5, 6)
    shifts = [(dx, dy) for dy in range(-2, 3) for dx in range(-2, 3)]
    for k, (dx, dy) in enumerate(shifts):
        for n in range(3):
            assert torch.equal(out[k * 3 + n], naive_shift(images[n], dx, dy))


def test_expanded_mnist_places_each_digit_at_random_on_40x40():
    ds = capslab.build_dataset({"name": "expanded_mnist", "copies": 2, "seed": 1})
    assert ds.info == capslab.DataInfo(1, 40, 40, 10)
    base, test = capslab.build_dataset("mnist5k").load("test"), ds.load("test")
    assert test.images.shape == (2000, 1, 40, 40) and test.images.dtype == torch.uint8
    assert test.labels.tolist() == base.labels.tolist() * 2
    canvas = torch.nn.functional.pad(base.images, (6,) * 4)
    found = set()
    for i in range(0, 2000, 40):
        matches = [
            (dx, dy)
            for dx in range(-6, 7)
            for dy in range(-6, 7)
            if torch.equal(naive_shift(canvas[i % 1000], dx, dy), test.images[i])
        ]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) > 30  # shifts vary from image to image
    again = capslab.build_dataset({"name": "expanded_mnist", "copies": 2, "seed": 1}).load("test")
    assert torch.equal(again.images, test.images)
    assert not torch.equal(
        ds.load("train").images[:1000],
        capslab.build_dataset({"name": "expanded_mnist", "copies": 2, "seed": 2}).load("train").images[:1000],
    )


def test_expanded_mnist_all_shifts_like_the_official_code():
    ds = capslab.build_dataset({"name": "expanded_mnist", "copies": "all", "shift": 1, "pad": 2})
    assert ds.info == capslab.DataInfo(1, 32, 32, 10)
    base, test = capslab.build_dataset("mnist5k").load("test"), ds.load("test")
    assert test.images.shape == (9000, 1, 32, 32) and test.labels.tolist() == base.labels.tolist() * 9
    assert torch.equal(test.images, affnist.all_shifts(torch.nn.functional.pad(base.images, (2,) * 4), 1))
    with pytest.raises(Exception, match="copies"):
        capslab.build_dataset({"name": "expanded_mnist", "copies": 0})
