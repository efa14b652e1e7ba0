"""The reconstruction regulariser (Sabour 2017): weight x sum of squared pixel errors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from capslab.params import Params


class ReconstructionParams(Params):
    enabled: bool = True
    weight: float = Field(0.0005, ge=0)  # paper: 0.0005
    # "sum": per-image sum of squared errors, mean over the batch (the paper's formula);
    # "mean": per-pixel mean (an MSE), so the same weight is 784x weaker on MNIST.
    reduction: Literal["sum", "mean"] = "sum"


def reconstruction_loss(recon: Tensor, images: Tensor, weight: float = 0.0005, reduction: str = "sum") -> Tensor:
    """weight x squared error between the decoder output and the input pixels (both in [0, 1])."""
    err = (recon.flatten(1) - images.flatten(1).to(recon.dtype)).pow(2)  # (B, C*H*W)
    per_image = err.sum(1) if reduction == "sum" else err.mean(1)
    return weight * per_image.mean()
