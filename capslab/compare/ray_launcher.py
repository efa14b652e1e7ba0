"""``capslab compare RECIPE --launcher ray [--address ADDR]``: each run a Ray task.

A task asks for ``--cpus-per-run`` CPUs and, when the cluster has GPUs, ``1 / --runs-per-gpu`` of a GPU (Ray
sets the task's CUDA_VISIBLE_DEVICES). Without ``--address`` Ray starts on this machine (``ray.init()``);
with one (``auto`` or ``ray://host:10001``) the runs go to that cluster: Ray on Kubernetes, Slurm or cloud VMs.

Files: a probe task first looks for a marker file in the comparison's output directory. When a worker sees
it (a shared filesystem), every run trains in place. Otherwise each run directory travels with its task
(a tar archive in Ray's object store) and comes back the same way when the task ends; only a run that
finished or failed is shipped back, so a retried task restarts from the checkpoint it was given. (A
cluster where some nodes share the filesystem and others do not is not supported: a task that lands on a
node without it fails with a message saying so.)

A task whose worker process dies (node lost, out-of-memory kill) is retried up to ``RETRIES`` times; a
comparison that stops part-way resumes like the local one: finished runs are skipped.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from capslab.compare.launch import launch, thread_env
from capslab.errors import CapslabError

RETRIES = 3
MARKER = ".capslab-ray-{}"


class RunKilled(RuntimeError):
    """The training process died from a signal: Ray retries the task."""


def pack(run_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(run_dir.iterdir()):
            tar.add(child, arcname=child.name)
    return buffer.getvalue()


def unpack(data: bytes, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(run_dir, filter="data")  # "data": no absolute paths, links or devices from the archive


def sees(marker: str) -> bool:
    """Body of the probe task: does this worker see the driver's output directory?"""
    return Path(marker).exists()


def train_task(run_dir: str, marker: str, payload: bytes | None, threads: int) -> tuple[int, bytes | None]:
    """Body of one Ray task: train in place when ``marker`` is visible (shared filesystem), else in a
    temporary directory unpacked from ``payload``, returning the directory packed again."""
    if Path(marker).exists():
        code = launch(Path(run_dir), thread_env(threads))
        result = None
    elif payload is None:
        raise CapslabError(f"{run_dir}: not visible on this Ray node, though the probe saw the shared filesystem")
    else:
        with tempfile.TemporaryDirectory(prefix="capslab-run-") as tmp:
            local = Path(tmp)
            unpack(payload, local)
            code = launch(local, thread_env(threads))
            result = pack(local)
    if code < 0:  # killed by a signal: a lost worker, not the recipe's fault
        raise RunKilled(f"{run_dir}: training process killed by signal {-code}")
    return code, result


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise CapslabError(
            "--launcher ray needs Ray: pip install 'capslab[ray]' (or use the default --launcher local)"
        ) from None
    return ray


def run_ray(
    run_dirs: Sequence[Path],
    out_dir: Path,
    address: str | None,
    cpus_per_run: int,
    runs_per_gpu: int,
    on_done: Callable[[Path, int, str], None],
) -> None:
    """Run every directory as a Ray task; ``on_done(run_dir, exit_code, node)`` as each finishes."""
    ray = ray_module()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    task = ray.remote(
        num_cpus=cpus_per_run,
        num_gpus=1 / runs_per_gpu if gpus else 0,
        max_retries=RETRIES,
        retry_exceptions=[RunKilled],
    )(train_task)
    marker = out_dir / MARKER.format(uuid.uuid4().hex)
    marker.touch()
    try:
        shared = ray.get(ray.remote(num_cpus=0)(sees).remote(str(marker.resolve())))
        pending = {
            task.remote(
                str(run_dir.resolve()), str(marker.resolve()), None if shared else pack(run_dir), cpus_per_run
            ): run_dir
            for run_dir in run_dirs
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run_dir = pending.pop(ready[0])
            try:
                code, result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # retries exhausted
                (run_dir / "worker.log").write_text(f"Ray task failed after {RETRIES} retries: {exc}\n")
                code, result = 1, None
            if result is not None:
                unpack(result, run_dir)
            on_done(run_dir, code, "ray")
    finally:
        marker.unlink(missing_ok=True)
        if started:
            ray.shutdown()
