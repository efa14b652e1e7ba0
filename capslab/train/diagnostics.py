"""Routing diagnostics, averaged over an evaluation (recipe ``diagnostics: true``).

From the class layer's ``RoutingResult`` of a forward pass with ``diagnostics=True`` (the statistics are
defined in capslab.routing.trace):

- ``routing_entropy``: per iteration, the mean entropy (nats) of each input capsule's coupling
  distribution c_i. over the outputs; log J is uniform (no routing), 0 is one-hot;
- ``routing_logit_change``: per iteration, the mean |b^(r+1) - b^(r)| of the routing logits;
- ``routing_logit_change2``, ``routing_coupling_change``, ``routing_pose_change``: from the second
  iteration on, the second difference of b, mean |c^(r) - c^(r-1)| and mean ||v^(r) - v^(r-1)||: the
  quantities that vanish once routing has converged (``routing_logit_change2`` is the paper's Fig. A.1);
- ``routing_to_prediction``: the fraction of input capsules whose strongest coupling goes to the class
  the model predicts (how much of the layer "agrees" with the output).
"""

from __future__ import annotations

import warnings

from torch import Tensor

from capslab.routing.base import ITERATION_STATS, RoutingResult


class RoutingStats:
    """Batch-size-weighted means of the diagnostics over an evaluation."""

    warned: set[str] = set()  # routings already warned about (once per process)

    def __init__(self) -> None:
        self.n = 0
        self.n_coupling = 0  # examples whose routing reported a coupling
        self.sums: dict[str, Tensor] = {}  # statistic -> (iterations,) sums
        self.to_prediction = 0.0

    def add(self, routing: RoutingResult | None, scores: Tensor) -> None:
        if routing is None:  # a model without routing (baseline_cnn): nothing to record
            return
        b = scores.shape[0]
        self.n += b
        for key in ITERATION_STATS:
            value = getattr(routing, key)
            if value is not None and value.numel():
                value = value.detach().float().cpu() * b
                self.sums[key] = value if key not in self.sums else self.sums[key] + value
        if routing.coupling is not None:
            self.n_coupling += b
            strongest = routing.coupling.argmax(-1)  # (B, I): the output each input capsule feeds most
            pred = scores.argmax(1, keepdim=True)  # (B, 1)
            self.to_prediction += float((strongest == pred).float().mean(1).sum())

    def summary(self) -> dict[str, object]:
        if self.n == 0:
            return {}
        out: dict[str, object] = {
            f"routing_{key}": [round(float(v) / self.n, 8) for v in self.sums[key]]
            for key in ITERATION_STATS
            if key in self.sums
        }
        if self.n_coupling:  # never a misleading 0.0 for a routing that reports no coupling
            out["routing_to_prediction"] = round(self.to_prediction / self.n_coupling, 6)
        return out

    def warn_if_silent(self, routing_name: str) -> None:
        """One warning per routing and process when diagnostics were asked for and the routing gave none."""
        if self.n and not self.sums and not self.n_coupling and routing_name not in RoutingStats.warned:
            RoutingStats.warned.add(routing_name)
            warnings.warn(
                f"diagnostics: true, but routing {routing_name!r} returned no diagnostics (coupling, "
                "logit change, entropy): nothing is logged for it; see "
                "capslab.RoutingResult.with_diagnostics",
                stacklevel=2,
            )
