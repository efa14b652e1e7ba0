"""The paper's experiments as recipes: crops (CIFAR-10, smallNORB), ensemble evaluation, and (slow) a short run
of every recipe under recipes/paper/ on tiny files the test writes in each dataset's real format."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run
from test_datasets_more import cifar_batches, write_affnist_mat, write_cifar_tar, write_smallnorb, write_svhn

import capslab
from capslab.data import write_idx
from capslab.data.augment import centre_crop, random_crop
from capslab.recipe import load_recipe
from capslab.train.setup import input_info, make_model

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "recipes" / "paper"


def test_random_crop_takes_one_window_per_image():
    images = torch.arange(2 * 3 * 7 * 6, dtype=torch.float32).reshape(2, 3, 7, 6)
    g = torch.Generator().manual_seed(0)
    crops = random_crop(images, 4, g)
    assert crops.shape == (2, 3, 4, 4)
    for b in range(2):
        found = [
            (y, x) for y in range(4) for x in range(3) if torch.equal(crops[b], images[b, :, y : y + 4, x : x + 4])
        ]
        assert len(found) == 1, found  # exactly one window of the image, the same for every channel
    offsets = {
        tuple((random_crop(images, 4, torch.Generator().manual_seed(s))[0, 0, 0, 0] == images[0, 0]).nonzero()[0])
        for s in range(30)
    }
    assert len(offsets) > 3  # the offsets vary with the draw
    assert torch.equal(centre_crop(images, 4), images[..., 1:5, 1:5])
    with pytest.raises(ValueError, match="larger"):
        random_crop(images, 8)


def test_a_cropping_recipe_builds_its_model_for_the_crop():
    recipe = load_recipe(PAPER / "cifar10.yaml")
    info = input_info(recipe, capslab.DataInfo(3, 32, 32, 10))
    assert (info.height, info.width) == (24, 24)
    model = make_model(recipe, capslab.DataInfo(3, 32, 32, 10))
    out = model(torch.rand(2, 3, 24, 24), torch.tensor([1, 2]))
    assert out.scores.shape == (2, 10) and out.reconstruction.shape == (2, 3, 24, 24)
    assert model.caps.in_caps == 64 * 4 * 4  # 64 primary types on the 4x4 grid of a 24x24 crop
    with pytest.raises(capslab.CapslabError, match="train.crop: 40 is larger"):
        make_model(load_recipe(PAPER / "cifar10.yaml", ["train.crop=40"]), capslab.DataInfo(3, 32, 32, 10))


def write_mnist_idx(directory: Path, n_train=64, n_test=32) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    digits = capslab.build_dataset("mnist5k").load("test")
    for prefix, n, start in (("train", n_train, 0), ("t10k", n_test, n_train)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte", digits.images[start : start + n, 0].numpy())
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", digits.labels[start : start + n].numpy().astype(np.uint8))


def train_tiny(tmp_path, recipe: str, *overrides: str) -> Path:
    run_dir = tmp_path / Path(recipe).stem
    res = run(
        "train", recipe, "train.epochs=1", "train.batch_size=8", "train.device=cpu", *overrides, "--run-dir", run_dir
    )
    assert res.exit_code == 0, res.output
    return run_dir


def test_eval_of_several_checkpoints_averages_their_scores(tmp_path):
    tiny = [
        "model.conv_channels=8",
        "model.primary_types=2",
        "model.decoder=false",
        "train.limit_train=32",
        "train.limit_test=40",
        "reconstruction.enabled=false",
    ]
    runs = [train_tiny(tmp_path / f"s{s}", "recipes/quickstart.yaml", f"seed={s}", *tiny) for s in (0, 1)]
    res = run("eval", *runs, "--limit", "40", "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    from capslab.analysis.data import checkpoint_split
    from capslab.train.state import load_checkpoint_model

    models = [load_checkpoint_model(r, torch.device("cpu"))[0] for r in runs]
    recipe = load_checkpoint_model(runs[0], torch.device("cpu"))[1]
    data = checkpoint_split(recipe, split="test", limit=40)
    with torch.no_grad():
        scores = [m(data.images.float() / 255).scores for m in models]
    want = float((torch.stack(scores).mean(0).argmax(1) == data.labels).float().mean())
    members = [float((s.argmax(1) == data.labels).float().mean()) for s in scores]
    assert got["examples"] == 40 and got["accuracy"] == pytest.approx(want)
    assert got["members"] == pytest.approx(members)


# Each paper recipe, shrunk: tiny files in the dataset's real format, a narrow network, one short epoch.
SHRINK_CAPSNET = ["model.conv_channels=8", "model.primary_types=2", "model.decoder_hidden=[16,32]"]
TINY_DATA = {
    "table1.yaml": ("mnist", SHRINK_CAPSNET),
    "table1_baseline.yaml": ("mnist", ["model.channels=[4,4,4]", "model.hidden=[8,8]"]),
    "cifar10.yaml": ("cifar10", SHRINK_CAPSNET),
    "svhn.yaml": ("svhn", SHRINK_CAPSNET),
    "smallnorb.yaml": ("smallnorb", SHRINK_CAPSNET),
    "appendix_a.yaml": ("mnist5k", SHRINK_CAPSNET + ["train.limit_train=32", "train.limit_test=16"]),
    "multimnist.yaml": ("mnist5k", SHRINK_CAPSNET + ["train.limit_train=32", "train.limit_test=16"]),
    "affnist.yaml": ("mnist+affnist", SHRINK_CAPSNET),
}


def write_tiny(kind: str, directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "mnist":
        write_mnist_idx(directory)
    elif kind == "mnist+affnist":  # expanded MNIST of tiny MNIST files, tested on a tiny affNIST test.mat
        write_mnist_idx(directory / "mnist")
        write_affnist_mat(directory / "affnist" / "transformed" / "test.mat", n=6)
        return [
            f"data.base={{name: mnist, data_dir: {directory / 'mnist'}, download: false}}",
            f"test_also=[{{name: affnist, data_dir: {directory / 'affnist'}, download: false,"
            f" train: {{name: expanded_mnist, base: mnist5k}}}}]",
        ]
    elif kind == "cifar10":
        write_cifar_tar(directory / "cifar-10-python.tar.gz", cifar_batches(n=8))
    elif kind == "svhn":
        for split in ("train", "test"):
            write_svhn(directory / f"{split}_32x32.mat", n=12)
    elif kind == "smallnorb":
        for split in ("train", "test"):
            write_smallnorb(directory, split, n=10)
    else:
        return []
    return [f"data.data_dir={directory}", "data.download=false"]


def test_every_paper_recipe_has_a_short_run():
    assert {p.name for p in PAPER.glob("*.yaml")} == set(TINY_DATA)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY_DATA))
def test_paper_recipe_trains_and_evaluates_on_tiny_files(tmp_path, name):
    kind, shrink = TINY_DATA[name]
    data = write_tiny(kind, tmp_path / "data")
    run_dir = train_tiny(tmp_path, f"recipes/paper/{name}", *data, *shrink)
    res = run("eval", run_dir, "--json")
    assert res.exit_code == 0, res.output
    assert 0 <= json.loads(res.output)["accuracy"] <= 1


def test_a_two_camera_image_is_drawn_as_its_cameras_side_by_side():
    from capslab.analysis.grid import image_grid

    stereo = torch.stack([torch.zeros(3, 4), torch.ones(3, 4)]).reshape(1, 1, 2, 3, 4)  # (R, K, C=2, H, W)
    grid = image_grid(stereo, gap=1)
    assert grid.shape == (3 + 2, 8 + 2, 1)
    assert (grid[1:4, 1:5] == 0).all() and (grid[1:4, 5:9] == 1).all()


def test_generated_affine_digits_stay_in_frame_and_repeat_per_seed():
    from capslab_plugins.datasets.affnist import affine_digits

    square = torch.zeros(6, 1, 28, 28, dtype=torch.uint8)
    square[:, :, 9:19, 9:19] = 255  # a 10x10 square: its transformed area and corners are predictable
    a = affine_digits(square, torch.Generator().manual_seed(0))
    b = affine_digits(square, torch.Generator().manual_seed(0))
    assert a.shape == (6, 1, 40, 40) and torch.equal(a, b)
    assert not torch.equal(a, affine_digits(square, torch.Generator().manual_seed(1)))
    area = (a.float() / 255).sum((1, 2, 3))  # scale 0.8..1.2 per axis: area 0.64..1.44 of 100
    assert ((area > 0.6 * 100) & (area < 1.5 * 100)).all(), area
    big = torch.zeros(200, 1, 28, 28, dtype=torch.uint8)
    big[:, :, 2:26, 2:26] = 255  # a digit filling its box: at 1.2x and 20 degrees still inside 40x40
    out = affine_digits(big, torch.Generator().manual_seed(2))
    kept = out.float().sum((1, 2, 3)) / big.float().sum((1, 2, 3))
    assert (kept > 0.55).all() and (kept < 1.5).all()  # the translation never pushes the ink out of frame
    ds = capslab.build_dataset({"name": "affnist", "variant": "generated", "copies": 2, "seed": 3})
    test = ds.load("test")
    assert test.images.shape == (2000, 1, 40, 40) and torch.equal(test.labels[:1000], test.labels[1000:])
    assert torch.equal(test.images, ds.load("test").images)


def test_test_also_and_matched_accuracy_stopping(tmp_path):
    tiny = [
        "model.conv_channels=8",
        "model.primary_types=2",
        "model.decoder_hidden=[16,32]",
        "train.limit_train=64",
        "train.limit_test=40",
        "train.epochs=3",
    ]
    run_dir = train_tiny(
        tmp_path,
        "recipes/quickstart.yaml",
        *tiny,
        "train.stop_at_accuracy=0.01",
        "test_also=[{name: mnist5k}]",
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 1  # stopped after the first evaluation at or above 1 % accuracy
    assert evals[0]["test_error@mnist5k"] == pytest.approx(evals[0]["test_error"])  # the same test set twice
    res = run("train", "recipes/quickstart.yaml", *tiny, "test_also=[{name: multimnist}]", "--run-dir", tmp_path / "x")
    assert res.exit_code == 2 and "test_also[0]: multimnist has images (1, 36, 36)" in res.output


def test_the_gpu_script_lists_commands_that_validate():
    """benchmarks/paper_gpu.sh --dry-run needs no GPU; every train / compare line it would run validates."""
    import shlex
    import subprocess

    res = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "paper_gpu.sh"), "--dry-run", "/tmp/out"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    lines = [shlex.split(line[2:]) for line in res.stdout.splitlines() if line.startswith("+ capslab ")]
    commands = {args[1] for args in lines}
    assert {"train", "compare", "eval", "figures"} <= commands
    for args in lines:
        if args[1] == "train":
            overrides = [a for a in args[3:] if "=" in a and not a.startswith("--")]
            assert run("validate", args[2], *overrides).exit_code == 0, args
        elif args[1] == "compare":
            assert run("compare", args[2], "--dry-run").exit_code == 0, args
    ensemble = next(args for args in lines if args[1] == "eval")
    assert len(ensemble) - 2 == 7  # CIFAR-10: the paper's 7-model ensemble
    hidden = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU machine
    nogpu = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "paper_gpu.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=hidden,
    )
    assert nogpu.returncode == 2 and "no CUDA device" in nogpu.stderr and not nogpu.stdout  # nothing run
