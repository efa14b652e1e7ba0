"""``variational_bayes``: variational Bayes routing (Ribeiro, Leontidis, Kollias 2020, "Capsule Routing
via Variational Bayes", AAAI; official code fabio-deep/Variational-Capsule-Routing ``src/vb_routing.py``).

The output capsules are the components of a Gaussian mixture over the votes V_ij = u_hat_{j|i}, each
vote weighted by its input activation a_i, with a Dirichlet(alpha0) prior on the mixing weights and a
Normal-Wishart(m0, kappa0, Psi0, nu0) prior on each component (diagonal covariance). Start R_ij = 1/J;
each of the ``iterations`` rounds updates q(pi, mu, Lambda), then (all but the last) q(z):

    R_j = sum_i R_ij a_i ;  alpha_j = alpha0 + R_j ;  kappa_j = kappa0 + R_j ;  nu_j = nu0 + R_j
    mu_j = sum_i R_ij a_i V_ij / R_j ;     m_j = (R_j mu_j + kappa0 m0) / kappa_j
    Psi_j^-1 = Psi0^-1 + sum_i R_ij a_i (V_ij - mu_j)^2 + (kappa0 R_j / kappa_j) (mu_j - m0)^2
    E[ln pi_j]  = digamma(alpha_j) - digamma(sum_j' alpha_j')
    E[ln|L_j|]  = sum_{d=1..D} digamma((nu_j + 1 - d) / 2) + D ln 2 + ln|Psi_j|
    ln rho_ij   = E[ln pi_j] + E[ln|L_j|]/2 - D ln(2 pi)/2 - (D/kappa_j + nu_j sum_d Psi_jd (V_ijd - m_jd)^2)/2
    R_ij = softmax_j(ln rho_ij)

Output: poses m_j (the posterior means) and activations

    a_j = sigmoid(beta_a_j - (pi_j H[q(mu_j, L_j)] + beta_u_j)),  pi_j = exp(E[ln pi_j]),
    H[q] = D ln(2 pi e)/2 - E[ln|L_j|]/2,

with beta_a, beta_u learned per output capsule (zero-initialised), as the official code. Defaults are
the paper's: 3 iterations, alpha0 = 1, kappa0 = 1, Psi0 = I, nu0 = D + 1, m0 = 0. As the official code,
the activation logits and the output poses are batch-normalised without affine parameters
(``batch_norm``, ``pose_norm``, both default true: BN_a and BN_v of its routing module; during training an
example's output then depends on its batch-mates, as in the official code; in evaluation the running
statistics make it per example; a training batch of one uses the running statistics). The official
assignment omits E[ln pi_j] from the numerator: ``mixing_in_assignment: false``.

Scale: Psi0 = I, kappa0 and m0 are absolute, and the official model feeds the routing batch-normalised
poses (unit scale per dimension). ``vote_scale: rms`` (default, capslab.routing.scale) gives every
backbone that scale: each example's votes are divided by their RMS before routing (the posterior means
are multiplied back before the pose BatchNorm); ``raw`` routes the votes as they come.

The paper pairs the routing with a cross-entropy on the class activations (loss ``cross_entropy``).
Diagnostics: coupling R and the convergence statistics of capslab.routing.trace on ln R, R and m.
"""

import math

import torch
from pydantic import Field
from torch import Tensor, nn

import capslab
from capslab.routing.scale import VoteScale, rescale_poses
from capslab.routing.trace import RoutingTrace


class VariationalBayesParams(capslab.Params):
    iterations: int = Field(3, ge=1)
    alpha0: float = Field(1.0, gt=0)  # Dirichlet prior on the mixing weights
    kappa0: float = Field(1.0, gt=0)  # precision scale of the prior on the means
    m0: float = 0.0  # prior mean (every dimension)
    psi0: float = Field(1.0, gt=0)  # Wishart scale Psi0 = psi0 * I
    nu0: float | None = Field(None, gt=0)  # Wishart degrees of freedom; None: D + 1
    mixing_in_assignment: bool = True  # False: the official code's R_ij without E[ln pi_j]
    batch_norm: bool = True  # BatchNorm (no affine) on the activation logits, as the official code
    pose_norm: bool = True  # BatchNorm (no affine) on the output poses m_j, as the official code
    vote_scale: VoteScale = "rms"  # routing on votes of unit RMS (module doc)
    eps: float = Field(1e-10, gt=0)  # floor of R_j (all-zero input activations)


class VariationalBayesRouting(capslab.Routing):
    name = "variational_bayes"
    Params = VariationalBayesParams
    needs_activations = True

    def __init__(self, spec: capslab.RoutingSpec, squash=None, **params):
        super().__init__(spec, squash, **params)
        J, D = spec.out_caps, spec.pose_dim
        self.nu0 = self.params.nu0 if self.params.nu0 is not None else D + 1.0
        self.beta_a = nn.Parameter(torch.zeros(J))
        self.beta_u = nn.Parameter(torch.zeros(J))
        self.bn = nn.BatchNorm1d(J, affine=False) if self.params.batch_norm else None  # over (B, J) logits
        self.pose_bn = nn.BatchNorm1d(J * D, affine=False) if self.params.pose_norm else None  # over (B, J * D)

    def update_params(self, u: capslab.VoteMoments, a: Tensor, R: Tensor) -> dict[str, Tensor]:
        """q(pi, mu, Lambda) from the assignments R (B, J, I), activations a (B, I), votes u (B, J, I, D)."""
        p, D = self.params, u.shape[-1]
        Ra = R * a.unsqueeze(1)  # (B, J, I)
        weighted = u.weigh(Ra)
        R_j = weighted.total.clamp_min(p.eps)  # (B, J)
        kappa, nu, alpha = p.kappa0 + R_j, self.nu0 + R_j, p.alpha0 + R_j
        mu = weighted.sum / R_j.unsqueeze(-1)  # (B, J, D)
        m = (R_j.unsqueeze(-1) * mu + p.kappa0 * p.m0) / kappa.unsqueeze(-1)  # (B, J, D)
        scatter = weighted.scatter(mu)  # (B, J, D): sum_i Ra (u - mu)^2
        inv_psi = 1.0 / p.psi0 + scatter + (p.kappa0 * R_j / kappa).unsqueeze(-1) * (mu - p.m0).square()
        d = torch.arange(D, dtype=mu.dtype, device=mu.device)  # d - 1 for d = 1..D
        e_ln_lambda = (
            torch.digamma((nu.unsqueeze(-1) - d) / 2).sum(-1) + D * math.log(2.0) - inv_psi.log().sum(-1)
        )  # (B, J)
        e_ln_pi = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))  # (B, J)
        return dict(kappa=kappa, nu=nu, m=m, psi=1.0 / inv_psi, e_ln_lambda=e_ln_lambda, e_ln_pi=e_ln_pi)

    def log_assign(self, u: capslab.VoteMoments, q: dict[str, Tensor]) -> Tensor:
        """ln R (B, J, I): the expected log-likelihood of each vote under each component, normalised over j."""
        D = u.shape[-1]
        # ln rho = (E[ln|L|] - D ln 2 pi - D / kappa - nu sum_d psi (u - m)^2) / 2, the per-output terms
        # added inside the contraction
        const = 0.5 * (q["e_ln_lambda"] - D * math.log(2 * math.pi) - D / q["kappa"])  # (B, J)
        ln_rho = u.sq_distance(q["m"], -0.5 * q["nu"].unsqueeze(-1) * q["psi"], const)  # (B, J, I)
        if self.params.mixing_in_assignment:
            return (ln_rho + q["e_ln_pi"].unsqueeze(-1)).log_softmax(1)
        return ln_rho - (ln_rho + q["e_ln_pi"].unsqueeze(-1)).logsumexp(1, keepdim=True)  # official

    def route(
        self, votes: Tensor, activations: Tensor | None, poses: Tensor | None, iterations: int, diagnostics: bool
    ) -> capslab.RoutingResult:
        # the votes (B, J, I, D) through two contractions, one pass each (capslab.routing.moments), divided
        # by each example's RMS with vote_scale rms
        u = capslab.VoteMoments(votes.transpose(1, 2), self.params.vote_scale)
        B, J, I, D = u.shape
        log_R = votes.new_full((B, J, I), -math.log(J))  # uniform assignments
        trace = RoutingTrace() if diagnostics else None
        for t in range(iterations):
            R = log_R.exp()
            q = self.update_params(u, activations, R)
            update = None
            if t < iterations - 1 or diagnostics:  # the last E-step only feeds the diagnostics
                new = self.log_assign(u, q)
                update = new - log_R if trace is not None else None
                log_R = new
            if trace is not None:
                trace.record(R, q["m"], update)
        entropy = 0.5 * D * math.log(2 * math.pi * math.e) - 0.5 * q["e_ln_lambda"]  # (B, J): H[q(mu_j, L_j)]
        logit = self.beta_a - (q["e_ln_pi"].exp() * entropy + self.beta_u)  # (B, J)
        m = rescale_poses(q["m"], u.scale)  # (B, J, D)
        if self.bn is not None:
            logit = batch_norm(self.bn, logit)
        if self.pose_bn is not None:
            m = batch_norm(self.pose_bn, m.reshape(B, J * D)).view(B, J, D)
        result = capslab.RoutingResult(m, torch.sigmoid(logit))
        return trace.attach(result, R.transpose(1, 2)) if trace is not None else result


def batch_norm(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """``bn(x)`` for x (B, C); a training batch of one (no batch statistics) uses the running statistics."""
    if bn.training and x.shape[0] == 1:
        return nn.functional.batch_norm(x, bn.running_mean, bn.running_var, training=False, eps=bn.eps)
    return bn(x)


@capslab.hookimpl
def register_routings(register):
    register(VariationalBayesRouting)
