"""``em``: EM routing between matrix capsules (Hinton, Sabour, Frosst 2018, "Matrix capsules with EM routing").

Votes V_ij (D = 16: a flattened 4x4 pose) and input activations a_i; R_ij = 1/J at the start. Iteration t:

    M-step  R'_ij = R_ij a_i                      mass_j = sum_i R'_ij
            mu_jh = sum_i R'_ij V_ijh / mass_j    sigma2_jh = sum_i R'_ij (V_ijh - mu_jh)^2 / mass_j
            cost_jh = (beta_u_j + log sigma_jh) mass_j
            a_j = logistic(lambda_t (beta_a_j - sum_h cost_jh))
    E-step  log p_ij = -sum_h [ (V_ijh - mu_jh)^2 / (2 sigma2_jh) + log sigma_jh + log(2 pi) / 2 ]
            R_ij = softmax_j(log a_j + log p_ij)   (skipped after the last M-step)

Stabilisers of the official code (google-research capsule_em, em_layers.py): the inverse temperature rises
over the iterations, lambda_t = final_lambda (1 - 0.95^(t+1)) (final 0.01); the E-step is a log-sum-exp
over the outputs (no underflow of the Gaussian densities); the variance has a floor (5e-4) and the masses
an epsilon, so a collapsed or empty cluster stays finite. Options: ``mu_momentum`` (official 0.1:
mu = 0.9 mu_new + 0.1 mu_old, mu_0 = 0) and ``beta_a_scale`` (official 5000: beta_a is multiplied so that
its learning rate is effectively 5000x larger). beta_a and beta_u are learned, one per output capsule.

Output poses = mu (B, J, 16), activations = a_j. Diagnostics: R (B, I, J), and per iteration the mean
|delta log R| of the E-step and the entropy of R over the outputs.
"""

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

import capslab

LOG_2PI = math.log(2 * math.pi)


class EMParams(capslab.Params):
    iterations: int = Field(3, ge=1)
    final_lambda: float = Field(0.01, gt=0)  # official final_beta flag
    # "official": lambda_t = final_lambda (1 - 0.95^(t+1)); "constant": lambda_t = final_lambda
    lambda_schedule: Literal["official", "constant"] = "official"
    min_var: float = Field(5e-4, gt=0)  # variance floor (official 0.0005)
    mass_eps: float = Field(1e-5, gt=0)  # added to sum_i R'_ij (official 1e-5)
    mu_momentum: float = Field(0.0, ge=0, lt=1)  # official 0.1
    beta_a_scale: float = Field(1.0, gt=0)  # official 5000
    beta_a_init: float = 0.0
    beta_u_init: float = 0.0


class EMRouting(capslab.Routing):
    name = "em"
    Params = EMParams
    needs_activations = True

    def __init__(self, spec: capslab.RoutingSpec, squash=None, **params):
        super().__init__(spec, squash, **params)
        self.beta_a = nn.Parameter(torch.full((spec.out_caps,), self.params.beta_a_init))
        self.beta_u = nn.Parameter(torch.full((spec.out_caps,), self.params.beta_u_init))

    def inverse_temperature(self, t: int) -> float:
        p = self.params
        return p.final_lambda if p.lambda_schedule == "constant" else p.final_lambda * (1 - 0.95 ** (t + 1))

    def route(self, votes, activations, poses, iterations, diagnostics):
        p = self.params
        V = votes.transpose(1, 2)  # (B, J, I, D); contiguous when votes came from ClassCapsules
        B, J, I, D = V.shape
        a_in = activations.to(V.dtype).unsqueeze(1)  # (B, 1, I)
        log_R = V.new_full((B, J, I), -math.log(J))  # routing assignments, output-major
        mu = V.new_zeros(B, J, D)
        beta_a = self.beta_a * p.beta_a_scale  # (J,)
        deltas, entropies = [], []
        for t in range(iterations):
            R = log_R.exp()  # (B, J, I)
            if diagnostics:
                entropies.append(capslab.coupling_entropy(R, dim=1))
            # M-step
            Rp = R * a_in  # (B, J, I)
            mass = Rp.sum(-1, keepdim=True) + p.mass_eps  # (B, J, 1)
            mu_new = (Rp.unsqueeze(2) @ V).squeeze(2) / mass  # (B, J, 1, I) @ (B, J, I, D) -> (B, J, D)
            mu = mu_new if p.mu_momentum == 0 else (1 - p.mu_momentum) * mu_new + p.mu_momentum * mu
            diff2 = (V - mu.unsqueeze(2)).pow(2)  # (B, J, I, D)
            var = (Rp.unsqueeze(2) @ diff2).squeeze(2) / mass + p.min_var  # (B, J, D)
            log_var = var.log()
            cost = (self.beta_u.unsqueeze(-1) + 0.5 * log_var) * mass  # (B, J, D); log sigma = log var / 2
            logit = self.inverse_temperature(t) * (beta_a - cost.sum(-1))  # (B, J)
            if t == iterations - 1 and not diagnostics:
                break  # the last E-step only feeds the diagnostics
            # E-step in the log domain
            mahalanobis = (diff2 @ var.reciprocal().unsqueeze(-1)).squeeze(-1)  # (B, J, I): sum_h diff2 / var
            log_p = -0.5 * (mahalanobis + (log_var.sum(-1, keepdim=True) + D * LOG_2PI))
            log_post = nn.functional.logsigmoid(logit).unsqueeze(-1) + log_p  # (B, J, I)
            new_log_R = log_post - log_post.logsumexp(1, keepdim=True)
            if diagnostics:
                deltas.append((new_log_R - log_R).detach().abs().mean())
            if t < iterations - 1:
                log_R = new_log_R
        result = capslab.RoutingResult(mu, logit.sigmoid())
        # coupling (B, I, J): the R of the last M-step
        return result.with_diagnostics(R.transpose(1, 2), deltas, entropies) if diagnostics else result


@capslab.hookimpl
def register_routings(register):
    register(EMRouting)
