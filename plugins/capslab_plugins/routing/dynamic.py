"""``dynamic``: routing by agreement (Sabour, Frosst, Hinton 2017, Procedure 1).

    b_ij = 0 (per example)
    repeat r times:
        c_i = softmax_j(b_i)                 coupling of input i, sums to 1 over the outputs
        s_j = sum_i c_ij u_hat_{j|i} (+ bias_j)
        v_j = squash(s_j)
        b_ij += u_hat_{j|i} . v_j

Hidden constants of the official code (Sarasra/models research/capsules layers.py), as options:
``bias`` (a learned bias added to s_j, initialised to 0.1), ``leaky`` (softmax over [0 | b], the
zero column dropped: a "none of the above" sink), ``gradient`` ("all": gradients flow through every
iteration, as the official code; "detach_inner": the votes are detached in all but the last
iteration, as several PyTorch ports do).
"""

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

import capslab


class DynamicParams(capslab.Params):
    iterations: int = Field(3, ge=1)
    bias: bool = True
    bias_init: float = 0.1
    leaky: bool = False
    gradient: Literal["all", "detach_inner"] = "all"


def coupling_softmax(b: Tensor, leaky: bool, dim: int) -> Tensor:
    """softmax over the outputs; leaky: over [0 | b] with the zero (sink) column dropped."""
    if not leaky:
        return b.softmax(dim)
    zero = torch.zeros_like(b.narrow(dim, 0, 1))
    return torch.cat([zero, b], dim).softmax(dim).narrow(dim, 1, b.shape[dim])


class DynamicRouting(capslab.Routing):
    name = "dynamic"
    Params = DynamicParams

    def __init__(self, spec: capslab.RoutingSpec, squash=None, **params):
        super().__init__(spec, squash, **params)
        self.bias = nn.Parameter(torch.full((spec.out_caps, spec.pose_dim), self.params.bias_init)) if self.params.bias else None

    def route(self, votes, activations, poses, iterations, diagnostics):
        p = self.params
        u = votes.transpose(1, 2)  # (B, J, I, D); contiguous when votes came from ClassCapsules
        u_inner = u.detach() if p.gradient == "detach_inner" else u
        B, J, I, _ = u.shape
        b = u.new_zeros(B, J, I)  # routing logits, per example, stored output-major
        deltas, entropies = [], []
        for r in range(iterations):
            last = r == iterations - 1
            uu = u if last else u_inner
            c = coupling_softmax(b, p.leaky, dim=1)  # (B, J, I)
            s = (c.unsqueeze(2) @ uu).squeeze(2)  # (B, J, 1, I) @ (B, J, I, D) -> (B, J, D)
            if self.bias is not None:
                s = s + self.bias
            v = self.squash(s)  # (B, J, D)
            if diagnostics:
                entropies.append(capslab.coupling_entropy(c, dim=1))
            if not last or diagnostics:  # the last update is only needed for the diagnostics
                delta = (uu @ v.unsqueeze(-1)).squeeze(-1)  # (B, J, I, D) @ (B, J, D, 1) -> (B, J, I)
                if diagnostics:
                    deltas.append(delta.detach().abs().mean())
                b = b + delta
        result = capslab.RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))
        if diagnostics:
            result.coupling = c.detach().transpose(1, 2)  # (B, I, J)
            result.logit_change = capslab.stack_stats(deltas)
            result.entropy = capslab.stack_stats(entropies)
        return result


@capslab.hookimpl
def register_routings(register):
    register(DynamicRouting)
