"""``self_routing``: self-routing capsule networks (Hahn, Pyeon, Kim 2019, NeurIPS; official code
coder3000/SR-CapsNet, ``modules.py`` SelfRouting2d).

Each input capsule routes itself with its own routing network on its pose u_i (no agreement, no
iterations):

    c_ij = softmax_j(W^r_i u_i + b^r_i)                        W^r_i (D_in -> J) and b^r_i zero-initialised
    a_j  = sum_i c_ij a_i / sum_i a_i                            output activation
    v_j  = sum_i (c_ij a_i / sum_i' c_i'j a_i') u_hat_{j|i}       activation-weighted mean of the votes

Inputs: the poses (B, I, D_in) and the activations (B, I) are required (a model without activations
gets an error, not ones: with a_i = 1 every a_j starts at exactly 1/J and predictions tie). In the
paper's model the activations are sigmoid(BatchNorm(conv)) heads (CapsNet: ``model.activations:
sigmoid``) and the loss an NLL on log a_j (loss ``nll``). Since sum_j c_ij = 1, the a_j sum to 1 over
the outputs and lie in [0, 1] (margin loss and NLL both apply). The routing networks read the poses at
unit RMS per example (``pose_scale: rms``, the scale of SR-CapsNet's BatchNorm'd poses; ``raw``: as
given). The poses are returned as is, as the official code (``squash_poses: true`` squashes them with
the recipe's squash). The official divisions have no guard; we clamp the denominators at ``eps`` so
all-zero activations give zeros, not NaN. Diagnostics (one pass): the coupling, its entropy, and as the
logit-change analogue mean |W^r_i u_i + b^r_i|, the logits' departure from their
zero initialisation (uniform coupling).
"""

import torch
from pydantic import Field
from torch import Tensor, nn

import capslab
from capslab.routing.scale import VoteScale, normalize_votes
from capslab.routing.trace import RoutingTrace


class SelfRoutingParams(capslab.Params):
    squash_poses: bool = False
    # "rms": the routing networks read each example's input poses divided by their RMS, the unit scale of
    # SR-CapsNet's BatchNorm'd primary poses (bn_pose); "raw": as they come (CapsNet's squashed |u| ~ 0.1
    # gives logits W^r u_i ten times smaller, and couplings that stay near uniform for many epochs)
    pose_scale: VoteScale = "rms"
    eps: float = Field(1e-12, gt=0)  # floor of the denominators (the official module's eps constant)


class SelfRouting(capslab.Routing):
    name = "self_routing"
    Params = SelfRoutingParams
    needs_poses = True
    needs_activations = True
    ranks_by = None  # the coupling is learned from each input's own pose (uniform at initialisation), not agreement

    def __init__(self, spec: capslab.RoutingSpec, squash=None, **params):
        super().__init__(spec, squash, **params)
        d_in = spec.in_pose_dim or spec.pose_dim
        self.weight = nn.Parameter(torch.zeros(spec.in_caps, d_in, spec.out_caps))  # W^r: (I, D_in, J)
        self.bias = nn.Parameter(torch.zeros(spec.in_caps, spec.out_caps))  # b^r: (I, J)

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> capslab.RoutingResult:
        eps = self.params.eps
        x, _ = normalize_votes(poses.unsqueeze(2), self.params.pose_scale)  # (B, I, 1, D_in)
        logits = torch.einsum("bik,ikj->bij", x.squeeze(2), self.weight) + self.bias  # (B, I, J)
        c = logits.softmax(-1)  # (B, I, J): over the outputs
        ca = c * activations.unsqueeze(-1)  # (B, I, J): c_ij a_i
        ca_sum = ca.sum(1)  # (B, J)
        a = ca_sum / activations.sum(1, keepdim=True).clamp_min(eps)  # (B, J)
        weights = ca / ca_sum.unsqueeze(1).clamp_min(eps)  # (B, I, J), sums to 1 over i
        # sum over i as a batched matmul on the (B, J, I, D) storage of the votes
        v = (weights.transpose(1, 2).unsqueeze(2) @ votes.transpose(1, 2)).squeeze(2)  # (B, J, D)
        if self.params.squash_poses:
            v = self.squash(v)
        result = capslab.RoutingResult(v, a)
        if not diagnostics:
            return result
        trace = RoutingTrace(coupling_dim=-1)  # c is (B, I, J)
        trace.record(c, v, logits)  # one pass: the logits' departure from their zero initialisation
        return trace.attach(result, c)


@capslab.hookimpl
def register_routings(register):
    register(SelfRouting)
