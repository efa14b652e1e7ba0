"""Slow: a real training process killed with SIGKILL at random points, resumed each time, ends with weights
bit-identical to an uninterrupted run (checkpoints are atomic, and resuming restores every RNG)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capslab.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "model.conv_channels=16",
    "model.primary_types=4",
    "model.decoder_hidden=[32,64]",
    "train.limit_train=256",
    "train.limit_test=64",
    "train.batch_size=16",
    "train.epochs=4",
    "train.threads=1",
    "train.device=cpu",
    "checkpoint.keep=2",
]
CLI = [sys.executable, "-c", "import sys; from capslab.cli.main import main; main(sys.argv[1:])"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.resolve_checkpoint(run_dir) / ckpt.MODEL_FILE))


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    subprocess.run(
        [*CLI, "train", "recipes/quickstart.yaml", *ARGS, "--run-dir", str(straight)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    rng = random.Random(0)
    run_dir = tmp_path / "killed"
    kills = 0
    first = [*CLI, "train", "recipes/quickstart.yaml", *ARGS, "--run-dir", str(run_dir)]
    for _ in range(40):
        resuming = (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob("step-*"))
        cmd = [*CLI, "train", "--resume", str(run_dir)] if resuming else first
        if not resuming and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # killed before its first checkpoint: start again
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 6:
            time.sleep(rng.uniform(2.0, 9.0))  # start-up, training, evaluation or a checkpoint write
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-2000:]
        break
    assert kills >= 3, "the run finished before it could be killed often enough; raise the budget"
    got, want = final_weights(run_dir), final_weights(straight)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
