"""``spread`` loss (Hinton, Sabour, Frosst 2018, matrix capsules with EM routing).

L = sum_{i != t} max(0, m - (a_t - a_i))^2, with the margin m rising from 0.2 to 0.9 during training.
Schedule shape of the official code (google-research capsule_em): m = m_min + (m_max - m_min) *
sigmoid(min(10, step / ramp_steps - 4)); the official constants are m_min 0.2, m_max 0.99 (0.2 + 0.79),
ramp_steps 50000; the default m_max is the paper's 0.9. ``schedule: linear`` ramps m from ``m_min`` to
``m_max`` over ``ramp_steps``; ``constant`` uses ``m_max``. The paper sums over the classes; the official
code (``order_loss`` then ``reduce_mean``) averages over the batch and the classes: ``class_reduction: mean``.
"""

import math
from typing import Literal

from pydantic import Field
from torch import Tensor

import capslab


class SpreadParams(capslab.Params):
    m_min: float = Field(0.2, ge=0)
    m_max: float = Field(0.9, ge=0)
    schedule: Literal["official", "linear", "constant"] = "official"
    ramp_steps: int = Field(50000, gt=0)  # official: step / ramp_steps - 4 inside the sigmoid
    class_reduction: Literal["sum", "mean"] = "sum"


class SpreadLoss(capslab.Loss):
    name = "spread"
    Params = SpreadParams

    def margin(self, step: int) -> float:
        p = self.params
        if p.schedule == "constant":
            return p.m_max
        if p.schedule == "linear":
            return p.m_min + (p.m_max - p.m_min) * min(1.0, step / p.ramp_steps)
        z = min(10.0, step / p.ramp_steps - 4.0)
        return p.m_min + (p.m_max - p.m_min) / (1.0 + math.exp(-z))

    def forward(self, scores: Tensor, targets: Tensor, *, step: int = 0) -> Tensor:
        t = capslab.multi_hot(targets, scores.shape[1], scores.dtype)  # (B, J)
        a_t = (scores * t).sum(1, keepdim=True) / t.sum(1, keepdim=True).clamp_min(1)  # (B, 1)
        gap = (self.margin(step) - (a_t - scores)).clamp_min(0).pow(2)  # (B, J)
        per_class = gap * (1 - t)  # (B, J), zero at the target(s)
        per_example = per_class.sum(1) if self.params.class_reduction == "sum" else per_class.mean(1)
        return per_example.mean()


@capslab.hookimpl
def register_losses(register):
    register(SpreadLoss)
