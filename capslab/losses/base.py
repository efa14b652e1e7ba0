"""Classification losses on capsule activations, and target helpers."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from capslab.params import Component


class Loss(Component, nn.Module):
    """Base class of loss plugins.

    ``forward(scores, targets, step=0)`` returns a scalar, averaged over the batch. ``scores (B, J)`` are
    the model's class outputs: capsule lengths / activations, or logits for a plain CNN. ``targets`` are
    class indices ``(B,)`` or multi-hot ``(B, J)`` (MultiMNIST). ``step`` drives schedules (spread loss).
    """

    # "probability": expects scores in [0, 1] (capsule lengths); "logits": any real scores.
    expects: ClassVar[str] = "probability"

    def __init__(self, **params):
        nn.Module.__init__(self)
        self.params = self.validate_params(params)

    def forward(self, scores: Tensor, targets: Tensor, *, step: int = 0) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())


def multi_hot(targets: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Class indices (B,) -> one-hot (B, J); a (B, J) tensor is returned as ``dtype``."""
    if targets.dim() == 2:
        return targets.to(dtype)
    return nn.functional.one_hot(targets.long(), num_classes).to(dtype)
