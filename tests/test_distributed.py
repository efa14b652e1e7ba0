"""Data-parallel training: two CPU processes under torchrun (gloo) end a few steps with the weights of one
process training on the same global batches, within float tolerance; rank 0 alone writes the run."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from capslab.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "model.conv_channels=16",
    "model.primary_types=4",
    "model.decoder_hidden=[32,64]",
    "train.limit_train=64",
    "train.limit_test=32",
    "train.batch_size=16",
    "train.epochs=2",
    "train.threads=1",
    "train.device=cpu",
]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.resolve_checkpoint(run_dir) / ckpt.MODEL_FILE))


def test_two_gloo_processes_match_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(
        [sys.executable, "-m", "capslab", "train", "recipes/quickstart.yaml", *ARGS, "--run-dir", str(one)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "capslab",
            "train",
            "recipes/quickstart.yaml",
            *ARGS,
            "--run-dir",
            str(two),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = weights(one), weights(two)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2]  # one writer: no duplicated records
    resumed = subprocess.run(
        [sys.executable, "-m", "capslab", "train", "--resume", str(two), "train.epochs=3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # the single-process format: one process resumes it
