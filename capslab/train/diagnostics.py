"""Routing diagnostics, averaged over an evaluation (recipe ``diagnostics: true``).

From the class layer's ``RoutingResult`` of a forward pass with ``diagnostics=True``:

- ``routing_entropy``: per iteration, the mean entropy (nats) of each input capsule's coupling
  distribution c_i. over the outputs; log J is uniform (no routing), 0 is one-hot;
- ``routing_logit_change``: per iteration, the mean |delta b_ij| of the routing logits;
- ``routing_to_prediction``: the fraction of input capsules whose strongest coupling goes to the class
  the model predicts (how much of the layer "agrees" with the output).
"""

from __future__ import annotations

from torch import Tensor

from capslab.routing.base import RoutingResult


class RoutingStats:
    """Batch-size-weighted means of the diagnostics over an evaluation."""

    def __init__(self) -> None:
        self.n = 0
        self.entropy: Tensor | None = None  # (iterations,) sums
        self.logit_change: Tensor | None = None
        self.to_prediction = 0.0

    def add(self, routing: RoutingResult | None, scores: Tensor) -> None:
        if routing is None:  # a model without routing (baseline_cnn): nothing to record
            return
        b = scores.shape[0]
        self.n += b
        if routing.entropy is not None:
            self.entropy = _add(self.entropy, routing.entropy.detach().float().cpu() * b)
        if routing.logit_change is not None:
            self.logit_change = _add(self.logit_change, routing.logit_change.detach().float().cpu() * b)
        if routing.coupling is not None:
            strongest = routing.coupling.argmax(-1)  # (B, I): the output each input capsule feeds most
            pred = scores.argmax(1, keepdim=True)  # (B, 1)
            self.to_prediction += float((strongest == pred).float().mean(1).sum())

    def summary(self) -> dict[str, object]:
        if self.n == 0:
            return {}
        out: dict[str, object] = {}
        if self.entropy is not None:
            out["routing_entropy"] = [round(float(v) / self.n, 6) for v in self.entropy]
        if self.logit_change is not None:
            out["routing_logit_change"] = [round(float(v) / self.n, 6) for v in self.logit_change]
        out["routing_to_prediction"] = round(self.to_prediction / self.n, 6)
        return out


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total + value
