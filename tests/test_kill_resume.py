"""Slow: a real training process killed with SIGKILL at random points, resumed each time, ends with weights
bit-identical to an uninterrupted run (checkpoints are atomic, and resuming restores every RNG)."""

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capslab.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 4
ARGS = [
    "model.conv_channels=16",
    "model.primary_types=4",
    "model.decoder_hidden=[32,64]",
    "train.limit_train=256",
    "train.limit_test=64",
    "train.batch_size=16",
    f"train.epochs={EPOCHS}",
    "train.threads=1",
    "train.device=cpu",
    "checkpoint.keep=2",
]
CLI = [sys.executable, "-c", "import sys; from capslab.cli.main import main; main(sys.argv[1:])"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.resolve_checkpoint(run_dir) / ckpt.MODEL_FILE))


def newest_checkpoint(run_dir: Path) -> str | None:
    try:
        return (run_dir / "checkpoints" / ckpt.LATEST).read_text()
    except OSError:
        return None


def kill_at_a_random_point(
    proc: subprocess.Popen, run_dir: Path, rng: random.Random, early: bool, start_s: float, epoch_s: float
) -> bool:
    """SIGKILL proc at a random point that scales with this machine's speed (start_s, epoch_s: the uninterrupted
    run's start-up and epoch times): ``early``, during start-up or the first epoch; otherwise within an epoch
    after the next checkpoint it writes (training, evaluation or the following checkpoint write). False when
    it finished first."""
    if early:
        time.sleep(rng.uniform(0.0, start_s + epoch_s))
    else:
        before, deadline = newest_checkpoint(run_dir), time.monotonic() + 900
        while proc.poll() is None and newest_checkpoint(run_dir) == before:
            assert time.monotonic() < deadline, "no checkpoint written in 15 minutes"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, epoch_s))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    start = time.perf_counter()
    subprocess.run(
        [*CLI, "train", "recipes/quickstart.yaml", *ARGS, "--run-dir", str(straight)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=900,
    )
    wall = time.perf_counter() - start
    epochs = [r["epoch_s"] for r in map(json.loads, (straight / "metrics.jsonl").open()) if r["kind"] == "eval"]
    assert len(epochs) == EPOCHS
    epoch_s = statistics.median(epochs)
    start_s = max(wall - sum(epochs), 0.0)
    rng = random.Random(0)
    run_dir = tmp_path / "killed"
    kills = 0
    first = [*CLI, "train", "recipes/quickstart.yaml", *ARGS, "--run-dir", str(run_dir)]
    for attempt in range(40):
        resuming = (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").glob("step-*"))
        cmd = [*CLI, "train", "--resume", str(run_dir)] if resuming else first
        if not resuming and run_dir.exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start again
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 6 and kill_at_a_random_point(proc, run_dir, rng, attempt == 0, start_s, epoch_s):
            kills += 1
            continue
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-2000:]
        break
    assert kills >= 3, "the run finished before it was killed three times"
    got, want = final_weights(run_dir), final_weights(straight)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
