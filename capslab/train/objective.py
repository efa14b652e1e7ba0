"""What training minimises and evaluation counts: the loss (classification + reconstruction) and the hits."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from capslab.errors import CapslabError
from capslab.losses.reconstruction import ReconstructionParams, reconstruction_loss


def total_loss(
    out: Any,
    images: Tensor,
    targets: Tensor,
    loss_fn: nn.Module,
    recon: ReconstructionParams,
    step: int,
    sources: Tensor | None = None,
) -> Tensor:
    """Classification loss + the reconstruction term when enabled and the model reconstructs.

    A model that reconstructs each composed image on its own (reconstruction (B, K, C, H, W), MultiMNIST) is
    held to each source image (B, K, C, H, W): the term is the sum of the K per-image terms (Sabour 2017,
    Sec. 6)."""
    loss = loss_fn(out.scores.float(), targets, step=step)
    if recon.enabled and out.reconstruction is not None:
        target = images
        if out.reconstruction.dim() == 5:
            if sources is None:
                raise CapslabError(
                    "the model reconstructs each composed image separately, but the dataset gives no source "
                    "images (Split.sources); use a dataset that composes its examples, or reconstruction.enabled=false"
                )
            target = sources
        loss = loss + reconstruction_loss(out.reconstruction.float(), target, recon.weight, recon.reduction)
    return loss


def correct(scores: Tensor, targets: Tensor) -> int:
    """Examples whose top-k classes are exactly their k labels (k = 1 for class indices)."""
    if targets.dim() == 1:
        return int((scores.argmax(1) == targets).sum())
    k = int(targets.sum(1).max())
    hits = targets.gather(1, scores.topk(k, dim=1).indices).sum(1)  # (B,) labels among the top k
    return int((hits == targets.sum(1)).sum())
