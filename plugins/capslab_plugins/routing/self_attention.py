"""``self_attention``: the non-iterative self-attention routing of Efficient-CapsNet (Mazzia et al. 2021).

For each output j, with U_j (I, D) the votes u_hat_{j|i} of all inputs:

    A_j  = U_j U_j^T / sqrt(D)                      (I, I) agreement between the inputs' votes
    c_ij = softmax_j( sum_k A_j[i, k] )             coupling, normalised over the outputs
    s_j  = sum_i u_hat_{j|i} (c_ij + b_ij)          b: a learned log-prior (I, J), initialised to 0
    v_j  = squash(s_j)                              the recipe's squash (``efficient`` in the paper)

The (B, J, I, I) matrices are never formed: sum_k A_j[i, k] = u_hat_{j|i} . (sum_k u_hat_{j|k}) / sqrt(D),
one (I, D) x (D,) product per output (the official FCCaps einsum computes exactly this contraction).
``iterations`` is ignored. Activations = |v_j|. Diagnostics: c (B, I, J); the "logit change" of the
single pass is the mean |sum_k A_j[i, k]| (the logits move from 0 to these values), its entropy that of c.
"""

import math

import torch
from torch import Tensor, nn

import capslab
from capslab.routing.trace import RoutingTrace


class SelfAttentionRouting(capslab.Routing):
    name = "self_attention"

    def __init__(self, spec: capslab.RoutingSpec, squash=None, **params):
        super().__init__(spec, squash, **params)
        self.prior = nn.Parameter(torch.zeros(spec.in_caps, spec.out_caps))  # b (I, J), the learned log-prior

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> capslab.RoutingResult:
        u = votes.transpose(1, 2)  # (B, J, I, D); contiguous when votes came from ClassCapsules
        D = u.shape[-1]
        total = u.sum(2, keepdim=True)  # (B, J, 1, D): sum_k u_hat_{j|k}
        logits = (u @ total.transpose(-1, -2)).squeeze(-1) / math.sqrt(D)  # (B, J, I) = sum_k A_j[i, k]
        c = logits.softmax(1)  # (B, J, I), over the outputs
        weights = c + self.prior.t()  # (B, J, I)
        s = (weights.unsqueeze(2) @ u).squeeze(2)  # (B, J, 1, I) @ (B, J, I, D) -> (B, J, D)
        v = self.squash(s)
        result = capslab.RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))
        if not diagnostics:
            return result
        trace = RoutingTrace()
        trace.record(c, v, logits)  # one pass: the logits move from 0 to these values
        return trace.attach(result, c.transpose(1, 2))


@capslab.hookimpl
def register_routings(register):
    register(SelfAttentionRouting)
