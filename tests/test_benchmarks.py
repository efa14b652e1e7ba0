"""The benchmark scripts start (a stdlib-shadowing file name once broke them all) and the GPU check's CPU-side
logic: its steps listed on any machine, and one line with exit 2 where there is no GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmark_script_starts(script):
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "usage" in res.stdout.lower(), res.stderr[-2000:]


def test_gpu_check_lists_its_steps_and_refuses_without_a_gpu():
    script = str(ROOT / "benchmarks" / "gpu_check.sh")
    listed = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0
    steps = [line for line in listed.stdout.splitlines() if line.startswith("+ ")]
    assert len(steps) == 3 and "-m cuda" in steps[0] and "step.py --device cuda" in steps[1]
    assert "capslab compare" in steps[2]
    hidden = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", script], capture_output=True, text=True, timeout=60, env=hidden)
    assert res.returncode == 2 and "no CUDA device" in res.stderr and not res.stdout
