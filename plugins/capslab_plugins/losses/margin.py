"""``margin`` loss (Sabour 2017, Eq. 4).

L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2, summed over classes (the
official code takes the mean over classes instead: ``class_reduction: mean``), mean over the batch.
Multi-hot targets (MultiMNIST: two digits) are allowed.
"""

from typing import Literal

from pydantic import Field
from torch import Tensor

import capslab


class MarginParams(capslab.Params):
    m_pos: float = Field(0.9, ge=0, le=1)
    m_neg: float = Field(0.1, ge=0, le=1)
    lambda_: float = Field(0.5, ge=0, alias="lambda")
    class_reduction: Literal["sum", "mean"] = "sum"


class MarginLoss(capslab.Loss):
    name = "margin"
    Params = MarginParams

    def forward(self, scores: Tensor, targets: Tensor, *, step: int = 0) -> Tensor:
        p = self.params
        t = capslab.multi_hot(targets, scores.shape[1], scores.dtype)  # (B, J)
        pos = t * (p.m_pos - scores).clamp_min(0).pow(2)
        neg = p.lambda_ * (1 - t) * (scores - p.m_neg).clamp_min(0).pow(2)
        per_class = pos + neg  # (B, J)
        per_example = per_class.sum(1) if p.class_reduction == "sum" else per_class.mean(1)
        return per_example.mean()


@capslab.hookimpl
def register_losses(register):
    register(MarginLoss)
