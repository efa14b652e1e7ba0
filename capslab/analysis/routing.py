"""How routing converges, iteration by iteration (Sabour 2017, Appendix A).

Per routing iteration r, the diagnostics of a class layer's routing (capslab.train.diagnostics,
defined in capslab.routing.trace) are

    mean |delta b|_r   = mean |b^(r+1) - b^(r)|        (dynamic routing: |u_hat . v^(r)|; tends to |u_hat . v*|, not 0)
    mean |delta2 b|_r  = mean |delta b_r - delta b_(r-1)|  (the paper's Fig. A.1: vanishes at convergence)
    mean |delta c|_r   = mean |c^(r) - c^(r-1)|
    mean ||delta v||_r = mean ||v^(r) - v^(r-1)||
    H_r                = mean entropy of c_i.^(r)      (log J: uniform coupling)

Two sources: a run's ``metrics.jsonl`` (recipe ``diagnostics: true``: one record per evaluation, so
their evolution over training), and a checkpoint directly: the test set routed with ``iterations = k``
for k = 1..N, through the routing contract's ``forward(..., iterations=k)``. Routing converges when
the vanishing statistics fall with every iteration; the test accuracy per k shows what inference-time
iterations beyond the trained number buy.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from capslab.data.base import Split
from capslab.routing.base import Routing
from capslab.train.evaluate import evaluate

STATS = ("routing_logit_change", "routing_entropy")  # per-iteration lists, keys of capslab.train.diagnostics
# per-iteration lists from the second iteration on, that vanish at convergence; the first is the paper's Fig. A.1
CONVERGENCE = ("routing_logit_change2", "routing_coupling_change", "routing_pose_change")
PAPER_STAT = CONVERGENCE[0]


def routings(model: nn.Module) -> list[Routing]:
    return [m for m in model.modules() if isinstance(m, Routing)]


def sweeps_iterations(routing: Routing) -> bool:
    """Whether the routing has an ``iterations`` parameter (self-attention or uniform routing does not)."""
    return "iterations" in type(routing.params).model_fields


@contextlib.contextmanager
def routing_iterations(model: nn.Module, k: int) -> Iterator[list[Routing]]:
    """Every routing of ``model`` runs ``k`` iterations inside the block (as a recipe's routing.iterations=k).

    The models call their routings without ``iterations=``; the instance's ``forward`` is shadowed by one
    that passes it (the contract's own argument), and restored afterwards.
    """
    found = routings(model)
    saved = [r.__dict__.get("forward") for r in found]
    for r in found:
        r.forward = functools.partial(type(r).forward, r, iterations=k)  # type: ignore[method-assign]
    try:
        yield found
    finally:
        for r, f in zip(found, saved):
            del r.forward
            if f is not None:
                r.forward = f  # type: ignore[method-assign]


def iteration_sweep(
    model: nn.Module, data: Split, device: torch.device, max_iterations: int, batch_size: int = 500
) -> list[dict[str, Any]]:
    """For k = 1..max_iterations: {"iterations": k, "accuracy", "routing_logit_change" (k,), "routing_entropy" (k,),
    "routing_to_prediction"} on ``data``, from the class layer's routing diagnostics."""
    rows = []
    for k in range(1, max_iterations + 1):
        with routing_iterations(model, k):
            m = evaluate(model, data, device=device, batch_size=batch_size, diagnostics=True)
        rows.append(
            {
                "iterations": k,
                **{key: m[key] for key in ("accuracy", *STATS, *CONVERGENCE, "routing_to_prediction") if key in m},
            }
        )
    return rows


def falls_every_iteration(values: list[float]) -> bool:
    return len(values) > 1 and all(a > b for a, b in zip(values, values[1:]))


def training_history(records: list[dict[str, Any]]) -> dict[str, Any]:
    """From metrics.jsonl records: {"epoch": [...], "step": [...], key: [[per iteration] per evaluation]}
    for the evaluations that carry routing diagnostics; {} when none does."""
    evals = [r for r in records if r.get("kind") == "eval" and STATS[0] in r]
    if not evals:
        return {}
    return {
        "epoch": [r["epoch"] for r in evals],
        "step": [r["step"] for r in evals],
        **{key: [r.get(key, []) for r in evals] for key in (*STATS, *CONVERGENCE)},
    }
