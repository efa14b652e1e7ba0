"""``max_min``: dynamic routing with min-max normalised couplings (Zhao, Kleinhans, Sandhu, Patel,
Unnikrishnan 2019, "Capsule Networks with Max-Min Normalization", arXiv:1903.09662).

Procedure 1 (see :class:`capslab.AgreementRouting`) with the softmax over the outputs replaced by

    c_ij = lb + (ub - lb) (b_ij - min_j b_ij) / (max_j b_ij - min_j b_ij),   lb = 0, ub = 1

so each input's couplings span [lb, ub] independently instead of summing to 1 (the paper's point:
softmax keeps c nearly uniform). When all of input i's logits are equal (the first iteration,
b = 0) the ratio is 0/0; we define c_ij = 1/J there, the uniform coupling of dynamic routing's first
iteration, so the first pass of max_min equals dynamic routing's. No official code was published;
the other settings are dynamic routing's (3 iterations, bias, gradients through every iteration).
The compiled CPU kernel of dynamic routing has this coupling built in (capslab.routing.kernel); the
``couple`` below is the reference it is tested against.
"""

from pydantic import model_validator
from torch import Tensor

import capslab
from capslab.routing import backends


class MaxMinParams(capslab.AgreementParams):
    lb: float = 0.0
    ub: float = 1.0

    @model_validator(mode="after")
    def _bounds(self):
        if not self.lb < self.ub:
            raise ValueError(f"max_min needs lb < ub, got lb={self.lb}, ub={self.ub}")
        return self


@backends.compiled_coupling(lambda routing: "max_min")  # the compiled CPU kernel has it built in
class MaxMinRouting(capslab.AgreementRouting):
    name = "max_min"
    Params = MaxMinParams

    def couple(self, b: Tensor) -> Tensor:
        p = self.params
        lo, hi = b.amin(1, keepdim=True), b.amax(1, keepdim=True)  # (B, 1, I): over the outputs j
        span = hi - lo
        flat = span == 0  # 0/0: every output got the same logit
        c = p.lb + (p.ub - p.lb) * (b - lo) / span.masked_fill(flat, 1.0)  # (B, J, I)
        return c.masked_fill(flat, 1.0 / b.shape[1])


@capslab.hookimpl
def register_routings(register):
    register(MaxMinRouting)
