"""Per-iteration convergence statistics of one routing call (diagnostics only).

A routing feeds :meth:`RoutingTrace.record` once per iteration r with its coupling c^(r), its output
poses v^(r) and the logit update it applies after the iteration, b^(r+1) - b^(r) (or None when it
computes none, e.g. its last iteration outside diagnostics). The trace keeps the previous iteration's
values (detached) and derives:

- ``entropy``: mean entropy of c^(r) over the outputs (log J: uniform coupling);
- ``logit_change``: mean |b^(r+1) - b^(r)|. For dynamic routing this is mean |u_hat . v^(r)|, which tends
  to mean |u_hat . v*|, not to zero, once the poses have converged: it does not measure convergence;
- ``logit_change2``: the second difference mean |(b^(r+1) - b^(r)) - (b^(r) - b^(r-1))|, for dynamic
  routing mean |u_hat . (v^(r) - v^(r-1))|, the change of the update itself. This is the statistic that
  corresponds to Sabour et al. 2017, Appendix A, Fig. A.1: their average change of b_ij falls
  log-linearly over iterations (~7e-3 at the second pass to ~1e-5 by the fifth), which only a quantity
  that vanishes at a fixed point can do, and the update's change is bounded by |u_hat| ||v^(r) - v^(r-1)||;
- ``coupling_change``: mean |c^(r) - c^(r-1)|;
- ``pose_change``: mean over examples and outputs of ||v^(r) - v^(r-1)||.

The three differences start at the second iteration (``iterations - 1`` values each).
"""

from __future__ import annotations

from torch import Tensor

from capslab.routing.base import ITERATION_STATS, RoutingResult, coupling_entropy


class RoutingTrace:
    """Collects the statistics; ``attach`` puts them on a :class:`RoutingResult`."""

    def __init__(self, coupling_dim: int = 1):
        self.dim = coupling_dim  # the outputs' axis of the couplings fed to ``record``
        self.stats: dict[str, list[Tensor]] = {k: [] for k in ITERATION_STATS}
        self._coupling: Tensor | None = None
        self._poses: Tensor | None = None
        self._update: Tensor | None = None

    def record(self, coupling: Tensor, poses: Tensor, update: Tensor | None = None) -> None:
        """coupling normalised over ``coupling_dim``, poses (B, J, D), update b^(r+1) - b^(r) (any shape)."""
        c, v = coupling.detach(), poses.detach()
        self.stats["entropy"].append(coupling_entropy(c, dim=self.dim))
        if self._coupling is not None and self._poses is not None:
            self.stats["coupling_change"].append((c - self._coupling).abs().mean())
            self.stats["pose_change"].append((v - self._poses).norm(dim=-1).mean())
        if update is not None:
            d = update.detach()
            self.stats["logit_change"].append(d.abs().mean())
            if self._update is not None:
                self.stats["logit_change2"].append((d - self._update).abs().mean())
            self._update = d
        self._coupling, self._poses = c, v

    def attach(self, result: RoutingResult, coupling_bij: Tensor) -> RoutingResult:
        """The statistics onto ``result``, with the final coupling as (B, I, J)."""
        s = dict(self.stats)
        return result.with_diagnostics(coupling_bij, s.pop("logit_change"), s.pop("entropy"), **s)
