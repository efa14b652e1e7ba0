"""Where a comparison's runs execute. Each run is ``python -m capslab.compare.worker RUN_DIR`` in a child
process; a launcher decides where that process starts and what it may use.

- ``local`` (default): ``--jobs`` processes at once on this machine. With CUDA GPUs, each run that asks for
  ``train.device`` auto or cuda is pinned to one GPU (``CUDA_VISIBLE_DEVICES``), ``--runs-per-gpu K`` runs
  share each GPU, and ``--jobs`` defaults to GPUs x K. CPU threads are split between the jobs.
- ``ray``: each run is a Ray task (capslab/compare/ray_launcher.py).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from capslab.errors import CapslabError


@dataclass(frozen=True)
class Slot:
    """One place a run can execute: the environment it gets on top of the parent's."""

    env: dict[str, str] = field(default_factory=dict)
    label: str = "cpu"


def launch(run_dir: Path, env: dict[str, str]) -> int:
    """Train one run in a child process with ``env`` added; its output goes to RUN_DIR/worker.log."""
    with (run_dir / "worker.log").open("w") as log:
        return subprocess.run(
            [sys.executable, "-m", "capslab.compare.worker", str(run_dir)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        ).returncode


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def visible_gpus() -> list[str]:
    """The GPU ids runs may be pinned to: the parent's CUDA_VISIBLE_DEVICES if set, else every device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and not g.strip().startswith("-")]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def wants_gpu(device: str) -> bool:
    """Runs that may be pinned: ``auto`` and ``cuda``. An explicit ``cuda:N`` keeps the parent's devices."""
    return device in ("auto", "cuda")


def local_slots(jobs: int | None, runs_per_gpu: int, gpus: Sequence[str], cpus: int) -> list[Slot]:
    """The local launcher's slots: K per GPU when there are GPUs, else ``jobs`` CPU slots; threads split."""
    if runs_per_gpu < 1:
        raise CapslabError(f"--runs-per-gpu {runs_per_gpu}: must be 1 or more")
    if gpus:
        jobs = jobs or len(gpus) * runs_per_gpu
        ids = [gpus[i % len(gpus)] for i in range(jobs)]  # round-robin: jobs spread before they stack
        threads = max(1, cpus // jobs)
        return [Slot({"CUDA_VISIBLE_DEVICES": g, **thread_env(threads)}, f"cuda {g}") for g in ids]
    jobs = jobs or 1
    return [Slot(thread_env(max(1, cpus // jobs))) for _ in range(jobs)]


def slots_for(devices: Sequence[str], jobs: int | None, runs_per_gpu: int) -> list[Slot]:
    """The slots of this machine for runs on ``devices`` (their ``train.device``)."""
    gpus = visible_gpus() if any(wants_gpu(d) for d in devices) else []
    return local_slots(jobs, runs_per_gpu, gpus, os.cpu_count() or 1)


def run_local(
    run_dirs: Sequence[Path],
    devices: Sequence[str],
    all_slots: Sequence[Slot],
    on_done: Callable[[Path, int, str], None],
) -> None:
    """Run every directory, at most one per slot at a time; ``on_done(run_dir, exit_code, slot_label)``."""
    slots: queue.Queue[Slot] = queue.Queue()
    for slot in all_slots:
        slots.put(slot)

    def one(item: tuple[Path, str]) -> None:
        run_dir, device = item
        slot = slots.get()
        try:
            env = slot.env if wants_gpu(device) else {k: v for k, v in slot.env.items() if k != "CUDA_VISIBLE_DEVICES"}
            on_done(run_dir, launch(run_dir, env), slot.label)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=len(all_slots)) as pool:
        list(pool.map(one, zip(run_dirs, devices, strict=True)))
