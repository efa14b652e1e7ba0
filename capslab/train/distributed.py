"""Data-parallel training under torchrun: ``torchrun --nproc-per-node N -m capslab train RECIPE --run-dir DIR``
(or ``capslab train --nproc N``).

Every rank draws the same global batch (the same seeded generator, so the same order, crops and shifts as one
process) and trains on its own contiguous slice of it; DistributedDataParallel averages the gradients (gloo on
CPUs, NCCL on GPUs), and each rank's loss is weighted by its share of the batch, so an update equals the
single-process one on the whole batch (routing is per example) up to float rounding. Rank 0 alone writes
metrics, figures and checkpoints, in the single-process format: ``capslab eval``, ``inspect`` and
``--resume`` work unchanged, also with another number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from capslab.errors import CapslabError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env(device_name: str) -> Dist:
    """The process group torchrun describes in the environment (WORLD_SIZE > 1), joined; else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, local)


def device_for(dist: Dist, device: torch.device) -> torch.device:
    """Each rank's own GPU (cuda:LOCAL_RANK); the CPU as it is."""
    return torch.device("cuda", dist.local_rank) if dist.active and device.type == "cuda" else device


def wrap(model: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    if not dist.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(
    dist: Dist, images: Tensor, targets: Tensor, sources: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, float]:
    """This rank's contiguous slice of a global batch, and the weight of its loss (its share of the batch
    times the number of ranks), so that averaged gradients equal those of the whole batch."""
    n = images.shape[0]
    if not dist.active:
        return images, targets, sources, 1.0
    if n < dist.world:
        raise CapslabError(f"train.batch_size: a batch of {n} cannot be split over {dist.world} processes")
    lo, hi = dist.rank * n // dist.world, (dist.rank + 1) * n // dist.world
    part = sources[lo:hi] if sources is not None else None
    return images[lo:hi], targets[lo:hi], part, (hi - lo) * dist.world / n


def close(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()
