"""``uniform`` and ``random``: the routing controls of routing comparisons (Paik, Kwak, Kim 2019).

Both aggregate the votes with a fixed coupling, without any agreement step:

    s_j = sum_i c_ij u_hat_{j|i} (+ bias_j),   v_j = squash(s_j),   activations |v_j|

- ``uniform``: c_ij = 1/J, i.e. dynamic routing with 1 iteration (the same bias option, so the two
  match exactly).
- ``random``: c_i = softmax_j(z_i), z_ij ~ N(0, std^2), drawn afresh for every example and every
  forward pass (training and evaluation alike) from torch's global generator, so a run is
  reproducible under ``torch.manual_seed``; the draw is a constant (no gradient). std = 1 gives
  couplings clearly away from uniform for J = 10 (a symmetric Dirichlet-like spread); std -> 0 is
  ``uniform``.

Both reuse :class:`capslab.AgreementRouting`'s loop with one iteration (their Params have no
``iterations``, so the loop makes one pass: the coupling never depends on agreement); diagnostics
report the agreement that a second iteration would add as the logit change, as dynamic routing does
for its last iteration.
"""

import torch
from pydantic import Field
from torch import Tensor

import capslab


class UniformRouting(capslab.AgreementRouting):
    name = "uniform"
    Params = capslab.AggregationParams
    ranks_by = None  # a fixed coupling: the control that routing is compared against
    # AggregationParams has no iterations: AgreementRouting runs one pass; zero logits: softmax gives 1/J


class RandomParams(capslab.AggregationParams):
    std: float = Field(1.0, ge=0)  # std of the Gaussian logits


class RandomRouting(UniformRouting):
    name = "random"
    Params = RandomParams
    stochastic = True  # each forward draws new couplings (the conformance suite's batch check skips it)

    def initial_logits(self, u: Tensor) -> Tensor:
        B, J, I, _ = u.shape
        return torch.randn(B, J, I, device=u.device, dtype=u.dtype) * self.params.std  # (B, J, I)


@capslab.hookimpl
def register_routings(register):
    register(UniformRouting)
    register(RandomRouting)
