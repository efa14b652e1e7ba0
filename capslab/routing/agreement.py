"""Routing by agreement with a pluggable coupling: the loop of Procedure 1 (Sabour, Frosst, Hinton 2017).

    b_ij = initial_logits (0 in Procedure 1)       per example
    repeat r times:
        c = couple(b)                              coupling of each input i over the outputs j
        s_j = sum_i c_ij u_hat_{j|i} (+ bias_j)
        v_j = squash(s_j)
        b_ij += u_hat_{j|i} . v_j

Subclasses change only ``couple`` (``dynamic``: softmax / leaky softmax, ``max_min``: min-max
normalisation) or ``initial_logits`` and the number of iterations (the ``uniform`` and ``random``
baselines), so the loop lives here once. ``route`` shows the three implementations side by side: the
compiled CPU kernel, the fused operator loop, and the plain loop below, the reference the other two are
tested against; capslab.routing.backends chooses (one rule, one switch). ``bias`` is the learned bias of
the official code (init 0.1),
``gradient`` "all" lets gradients flow through every iteration (official code), "detach_inner" detaches
the votes in all but the last iteration (several PyTorch ports).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from capslab.params import Params
from capslab.routing import backends, kernel
from capslab.routing.backends import Backend
from capslab.routing.base import Routing, RoutingResult, RoutingSpec
from capslab.routing.fused import fused_agree
from capslab.routing.trace import RoutingTrace


class AggregationParams(Params):
    bias: bool = True  # a learned bias added to s_j (official code)
    bias_init: float = 0.1


class AgreementParams(AggregationParams):
    iterations: int = Field(3, ge=1)
    gradient: Literal["all", "detach_inner"] = "all"


class AgreementRouting(Routing):
    """Base of agreement routings: override ``couple`` (and ``initial_logits``) only."""

    Params = AgreementParams
    params: AggregationParams  # what validate_params returns for this class and its subclasses

    def __init__(self, spec: RoutingSpec, squash: nn.Module | None = None, **params):
        super().__init__(spec, squash, **params)
        bias = self.params.bias
        self.bias = nn.Parameter(torch.full((spec.out_caps, spec.pose_dim), self.params.bias_init)) if bias else None

    def initial_logits(self, u: Tensor) -> Tensor:
        """Routing logits before the first iteration, (B, J, I) output-major; Procedure 1: zeros."""
        B, J, I, _ = u.shape
        return u.new_zeros(B, J, I)

    def couple(self, b: Tensor) -> Tensor:
        """Coupling (B, J, I) from the logits (B, J, I), normalised over the outputs (dim 1)."""
        return b.softmax(1)

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> RoutingResult:
        """The Procedure-1 loop on votes (B, I, J, D); activations |v_j|. Params without ``iterations``
        (AggregationParams: a fixed coupling) make one pass."""
        if not hasattr(self.params, "iterations"):
            iterations = 1
        detach_inner = getattr(self.params, "gradient", "all") == "detach_inner"
        b = self.initial_logits(votes.transpose(1, 2))  # (B, J, I), per example, stored output-major
        backend = backends.choose(self, votes, diagnostics, b)
        if backend is Backend.KERNEL:
            return kernel.route(self, votes, iterations, detach_inner)
        if backend is Backend.FUSED:
            return fused_agree(self, votes, b, iterations, detach_inner, backends.zero_start(self))
        return self._reference_loop(votes, b, iterations, detach_inner, diagnostics)

    def _reference_loop(
        self, votes: Tensor, b: Tensor, iterations: int, detach_inner: bool, diagnostics: bool
    ) -> RoutingResult:
        """The loop as written in the paper, from logits b (B, J, I); records every iteration for diagnostics."""
        u = votes.transpose(1, 2)  # (B, J, I, D)
        u_inner = u.detach() if detach_inner else u
        trace = RoutingTrace() if diagnostics else None
        for r in range(iterations):
            last = r == iterations - 1
            uu = u if last else u_inner
            c = self.couple(b)  # (B, J, I)
            s = (c.unsqueeze(2) @ uu).squeeze(2)  # (B, J, 1, I) @ (B, J, I, D) -> (B, J, D)
            if self.bias is not None:
                s = s + self.bias
            v = self.squash(s)  # (B, J, D)
            delta = None
            if not last or diagnostics:  # the last update is only needed for the diagnostics
                delta = (uu @ v.unsqueeze(-1)).squeeze(-1)  # (B, J, I, D) @ (B, J, D, 1) -> (B, J, I)
                b = b + delta
            if trace is not None:
                trace.record(c, v, delta)
        result = RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))
        return trace.attach(result, c.transpose(1, 2)) if trace is not None else result
