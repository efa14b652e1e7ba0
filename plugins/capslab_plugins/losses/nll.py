"""``nll``: negative log-likelihood of class activations that form a distribution (Hahn, Pyeon, Kim 2019,
self-routing; official code coder3000/SR-CapsNet, ``main.py``: ``F.nll_loss(torch.log(out), target)``).

L = -log(a_t / sum_j a_j): self-routing's class activations already sum to 1 over the classes; other
scores in [0, 1] are renormalised first, so the loss is a proper NLL for them too. ``eps`` keeps the log
finite at a_t = 0. Multi-hot targets are split evenly (a soft target), as ``cross_entropy``.
"""

from pydantic import Field
from torch import Tensor

import capslab


class NLLParams(capslab.Params):
    eps: float = Field(1e-8, gt=0)


class NLLLoss(capslab.Loss):
    name = "nll"
    Params = NLLParams

    def forward(self, scores: Tensor, targets: Tensor, *, step: int = 0) -> Tensor:
        eps = self.params.eps
        s = scores.clamp_min(0) + eps
        log_p = s.log() - s.sum(1, keepdim=True).log()  # (B, J)
        t = capslab.multi_hot(targets, scores.shape[1], scores.dtype)
        t = t / t.sum(1, keepdim=True).clamp_min(1)
        return -(t * log_p).sum(1).mean()


@capslab.hookimpl
def register_losses(register):
    register(NLLLoss)
