"""``em``: EM routing between matrix capsules (Hinton, Sabour, Frosst 2018, "Matrix capsules with EM routing").

Votes V_ij (D = 16: a flattened 4x4 pose) and input activations a_i; R_ij = 1/J at the start. Iteration t:

    M-step  R'_ij = R_ij a_i                      mass_j = sum_i R'_ij
            mu_jh = sum_i R'_ij V_ijh / mass_j    sigma2_jh = sum_i R'_ij (V_ijh - mu_jh)^2 / mass_j
            cost_jh = (beta_u_j + log sigma_jh) mass_j
            a_j = logistic(lambda_t (beta_a_j - sum_h cost_jh))
    E-step  log p_ij = -sum_h [ (V_ijh - mu_jh)^2 / (2 sigma2_jh) + log sigma_jh + log(2 pi) / 2 ]
            R_ij = softmax_j(log a_j + log p_ij)   (skipped after the last M-step)

Stabilisers of the official code (google-research capsule_em, ``em_layers.py``, the routing loop of
``update_em_routing``): the inverse temperature rises over the iterations, lambda_t = final_lambda
(1 - 0.95^(t+1)) (final 0.01); the E-step is a log-sum-exp over the outputs (no underflow of the
Gaussian densities); the variance has a floor (5e-4) and the masses an epsilon (1e-5), so a collapsed or
empty cluster stays finite.

Two presets (``preset``; any key set beside it wins):

- ``paper`` (default): the equations above, log sigma in the cost, mu without momentum, beta_a unscaled,
  one final_lambda for every layer.
- ``official``: the official code's constants: mu = 0.9 mu_new + 0.1 mu_old (mu_0 = 0); beta_a multiplied
  by 5000 in the logit (its effective learning rate 5000x); the cost on log sigma^2 (``cost:
  log_variance``) instead of log sigma; the class-capsule layer routing with a quarter of the final
  inverse temperature (``class_lambda_factor: 0.25``; capslab.RoutingSpec.layer tells the layers apart);
  in conv-capsule layers, R of an input capsule normalised over every output of every window it falls in
  (``assignment: input``, capslab.ConvWindows; it starts uniform over those parents), not per window.
  Measured on recipes/routing/em.yaml with ``preset: official``, ``final_lambda: 0.01``, 4 epochs, one
  thread (2-core Xeon, AVX-512): 29.7% test accuracy with ``assignment: input`` against 84.2% with
  ``assignment: window``; spreading each input's unit mass over up to nine windows shrinks every window's
  cluster masses, and whatever the official code does to compensate is not recorded here.
  Sources: the first two and the schedule, floor and log-domain E-step as recorded from
  ``em_layers.py`` in capslab's routing survey; the rest as recorded in the project's tracker (issue
  10). No line is cited: the sessions that wrote this had no code search, and the official initial
  values of beta_a / beta_u (0 here) are unchecked.

Vote scale (``vote_scale``, capslab.routing.scale): ``rms`` (default) routes on each example's votes
divided by their RMS, so the variance floor, the inverse temperature and the costs are relative to the
vote scale; the poses mu are multiplied back. ``raw`` routes on the votes as they come (the official
code: its matrix-capsule model sets the scale). On CapsNet's backbone raw votes have a per-dimension
variance ~1e-4, below the floor: every cluster then looks alike and the activations saturate.

Output poses = mu (B, J, 16), activations = a_j. beta_a and beta_u are learned, one per output capsule.
Diagnostics: R (B, I, J) and the convergence statistics of capslab.routing.trace on log R (the logit
analogue), R and mu.
"""

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

import capslab
from capslab.params import with_preset
from capslab.routing.scale import VoteScale, rescale_poses
from capslab.routing.trace import RoutingTrace

LOG_2PI = math.log(2 * math.pi)

PRESETS = {
    "paper": {},
    "official": {
        "final_lambda": 0.01,
        "lambda_schedule": "official",
        "min_var": 5e-4,
        "mass_eps": 1e-5,
        "mu_momentum": 0.1,
        "beta_a_scale": 5000.0,
        "cost": "log_variance",
        "class_lambda_factor": 0.25,
        "assignment": "input",
    },
}


class EMParams(capslab.Params):
    preset: Literal["paper", "official"] = "paper"
    iterations: int = Field(3, ge=1)
    final_lambda: float = Field(0.01, gt=0)  # official final_beta flag
    # "official": lambda_t = final_lambda (1 - 0.95^(t+1)); "constant": lambda_t = final_lambda
    lambda_schedule: Literal["official", "constant"] = "official"
    class_lambda_factor: float = Field(1.0, gt=0)  # the class-capsule layer's lambda is final_lambda x this
    min_var: float = Field(5e-4, gt=0)  # variance floor (official 0.0005), in units of the vote scale with rms
    mass_eps: float = Field(1e-5, gt=0)  # added to sum_i R'_ij (official 1e-5)
    mu_momentum: float = Field(0.0, ge=0, lt=1)  # official 0.1
    beta_a_scale: float = Field(1.0, gt=0)  # official 5000
    cost: Literal["log_sigma", "log_variance"] = "log_sigma"  # paper: log sigma_h; official: log sigma_h^2
    # conv-capsule layers: R of an input normalised over the outputs of each window ("window") or over every
    # output of every window the input falls in ("input", official); the same where there are no windows
    assignment: Literal["window", "input"] = "window"
    vote_scale: VoteScale = "rms"
    beta_a_init: float = 0.0
    beta_u_init: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data):
        return with_preset(data, PRESETS)


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
        final = p.final_lambda * (p.class_lambda_factor if self.spec.layer == "class" else 1.0)
        return final if p.lambda_schedule == "constant" else final * (1 - 0.95 ** (t + 1))

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> capslab.RoutingResult:
        p = self.params
        # the votes (B, J, I, D) (contiguous when they came from ClassCapsules) through two contractions, one
        # pass over them each (capslab.routing.moments), divided by each example's RMS with vote_scale rms
        moments = capslab.VoteMoments(votes.transpose(1, 2), p.vote_scale)
        B, J, I, D = moments.shape
        a_in = activations.to(votes.dtype).unsqueeze(1)  # (B, 1, I)
        windows = self.spec.windows if p.assignment == "input" else None
        normalize = windows.log_softmax if windows is not None else (lambda x: x.log_softmax(1))
        log_R = normalize(votes.new_zeros(B, J, I))  # uniform routing assignments, output-major (B, J, I)
        mu = votes.new_zeros(B, J, D)
        beta_a = self.beta_a * p.beta_a_scale  # (J,)
        cost_scale = 1.0 if p.cost == "log_variance" else 0.5  # log sigma = log var / 2
        trace = RoutingTrace() if diagnostics else None
        for t in range(iterations):
            R = log_R.exp()  # (B, J, I)
            # M-step
            Rp = R * a_in  # (B, J, I)
            weighted = moments.weigh(Rp)
            mass = weighted.total.unsqueeze(-1) + p.mass_eps  # (B, J, 1)
            mu_new = weighted.sum / mass  # (B, J, D)
            mu = mu_new if p.mu_momentum == 0 else (1 - p.mu_momentum) * mu_new + p.mu_momentum * mu
            var = weighted.scatter(mu) / mass + p.min_var  # (B, J, D): sum_i Rp (V - mu)^2 / mass
            log_var = var.log()
            cost = (self.beta_u.unsqueeze(-1) + cost_scale * log_var) * mass  # (B, J, D)
            logit = self.inverse_temperature(t) * (beta_a - cost.sum(-1))  # (B, J)
            update = None
            if t < iterations - 1 or diagnostics:  # the last E-step only feeds the diagnostics
                # E-step in the log domain: log a_j + log p_ij, log p_ij = -sum_h (V - mu)^2 / (2 var)
                # - (sum_h log var_h + D log 2 pi) / 2, its per-output terms added inside the contraction
                log_norm = -0.5 * (log_var.sum(-1) + D * LOG_2PI)  # (B, J)
                log_post = moments.sq_distance(mu, -0.5 / var, nn.functional.logsigmoid(logit) + log_norm)
                new_log_R = normalize(log_post)
                update = new_log_R - log_R if trace is not None else None
                if t < iterations - 1:
                    log_R = new_log_R
            if trace is not None:
                trace.record(R, mu, update)
        result = capslab.RoutingResult(rescale_poses(mu, moments.scale), logit.sigmoid())
        # coupling (B, I, J): the R of the last M-step
        return trace.attach(result, R.transpose(1, 2)) if trace is not None else result


@capslab.hookimpl
def register_routings(register):
    register(EMRouting)
