"""``cross_entropy``: softmax cross-entropy on class scores (Tsai 2020, Ribeiro 2020).

Scores in [0, 1] (capsule lengths) can be sharpened by ``scale`` before the softmax; multi-hot targets
are split evenly (a soft target).
"""

from pydantic import Field
from torch import Tensor, nn

import capslab


class CrossEntropyParams(capslab.Params):
    scale: float = Field(1.0, gt=0)  # logits = scale * scores
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class CrossEntropyLoss(capslab.Loss):
    name = "cross_entropy"
    Params = CrossEntropyParams
    expects = "logits"

    def forward(self, scores: Tensor, targets: Tensor, *, step: int = 0) -> Tensor:
        logits = scores * self.params.scale
        if targets.dim() == 2:
            targets = targets.to(logits.dtype) / targets.sum(1, keepdim=True).clamp_min(1)
        return nn.functional.cross_entropy(logits, targets, label_smoothing=self.params.label_smoothing)


@capslab.hookimpl
def register_losses(register):
    register(CrossEntropyLoss)
