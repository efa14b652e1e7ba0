"""``inverted_dot_product``: inverted dot-product attention routing (Tsai, Srivastava, Goh,
Salakhutdinov 2020, "Capsules with Inverted Dot-Product Attention Routing", ICLR; official code
apple/ml-capsules-inverted-attention-routing, ``src/layers.py`` CapsuleFC).

    pass 1:      r_ij = 1/J                                  (uniform coupling)
                 p_j = LayerNorm(sum_i r_ij u_hat_{j|i})
    passes 2..T: a_ij = u_hat_{j|i} . p_j / sqrt(D)          (agreement with the current pose)
                 r_i = softmax_j(a_i)                        (the parent capsules compete for each child)
                 p_j = LayerNorm(sum_i r_ij u_hat_{j|i})

``iterations`` = T counts every pass, the uniform one included, as the official ``num_routing``
(T = 1: uniform only; the paper reports 1-2, default 2). The logits are recomputed from scratch in
each pass (not accumulated as in dynamic routing). LayerNorm over D with a learned gain and bias
shared by the output capsules (``nn.LayerNorm(out_d)``, as the official code); no squash.

Activations (``readout``): the official capsules have no length (LayerNorm fixes |p_j| ~ sqrt(D)); its
model reads the class scores with one linear map shared by all classes (``final_fc = nn.Linear(D, 1)``,
PyTorch's default init) and a cross-entropy on them:

- ``linear``: the paper's read-out, a_j = w . p_j + w0, class logits: pair it with loss ``cross_entropy``;
- ``sigmoid`` (default): sigmoid(w . p_j + w0), scores in [0, 1] for the margin loss of a shared backbone.

Either way the activations come from a learned read-out, so at initialisation only the coupling (not the
activations) ranks an output whose votes agree first (``ranks_by = "coupling"``). Diagnostics: the
statistics of capslab.routing.trace; the logit change of pass t is mean |a^(t) - a^(t-1)|, a^(0) = 0
being the uniform pass's logits.
"""

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

import capslab
from capslab.routing.trace import RoutingTrace


class InvertedDotProductParams(capslab.Params):
    iterations: int = Field(2, ge=1)
    layer_norm_eps: float = Field(1e-5, gt=0)  # nn.LayerNorm's default, as the official code
    readout: Literal["sigmoid", "linear"] = "sigmoid"  # linear: the paper's class logits (cross-entropy)


class InvertedDotProductRouting(capslab.Routing):
    name = "inverted_dot_product"
    Params = InvertedDotProductParams
    ranks_by = "coupling"  # the activations are a learned read-out of the LayerNorm'd poses

    def __init__(self, spec: capslab.RoutingSpec, squash=None, **params):
        super().__init__(spec, squash, **params)
        self.norm = nn.LayerNorm(spec.pose_dim, eps=self.params.layer_norm_eps)
        self.readout = nn.Linear(spec.pose_dim, 1)  # one classifier shared by every output capsule
        self.scale = spec.pose_dim**-0.5

    def agreement(self, u: Tensor, p: Tensor) -> Tensor:
        """a (B, J, I) = u_hat_{j|i} . p_j / sqrt(D); u (B, J, I, D), p (B, J, D)."""
        return (u @ p.unsqueeze(-1)).squeeze(-1) * self.scale  # (B, J, I, D) @ (B, J, D, 1)

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> capslab.RoutingResult:
        u = votes.transpose(1, 2)  # (B, J, I, D): per-output sums are batched matmuls
        B, J, I, _ = u.shape
        a = u.new_zeros(B, J, I)  # logits of the uniform first pass
        trace = RoutingTrace() if diagnostics else None
        for t in range(iterations):
            r = a.softmax(1)  # (B, J, I): over the outputs
            p = self.norm((r.unsqueeze(2) @ u).squeeze(2))  # (B, J, 1, I) @ (B, J, I, D) -> (B, J, D)
            update = None
            if t < iterations - 1 or diagnostics:  # the last agreement only feeds the diagnostics
                new = self.agreement(u, p)
                update = new - a
                a = new
            if trace is not None:
                trace.record(r, p, update)
        scores = self.readout(p).squeeze(-1)  # (B, J)
        result = capslab.RoutingResult(p, scores if self.params.readout == "linear" else torch.sigmoid(scores))
        return trace.attach(result, r.transpose(1, 2)) if trace is not None else result


@capslab.hookimpl
def register_routings(register):
    register(InvertedDotProductRouting)
