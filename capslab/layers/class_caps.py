"""Fully connected capsule layer: one transformation matrix per (input, output) pair, then routing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capslab.routing.base import Routing, RoutingResult


def compute_votes(u: Tensor, weight: Tensor) -> Tensor:
    """u (B, I, K), weight (J, I, K, D) -> votes viewed as (B, I, J, D), stored as (B, J, I, D).

    One batched contraction over the shared input index: W is never copied per example (ports that
    broadcast W across the batch spend a third to a half of their step and most of their memory there).
    The (B, J, I, D) storage makes every per-output sum a batched matmul in the routing.
    """
    votes = torch.einsum("bik,jikd->bjid", u, weight)  # (B, J, I, D)
    return votes.contiguous().transpose(1, 2)  # (B, I, J, D) view


class ClassCapsules(nn.Module):
    """Votes u_hat_{j|i} = W_ij u_i with a separate (K x D) W per (i, j), handed to a routing plugin."""

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, routing: Routing,
                 init_std: float = 0.1):
        super().__init__()
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        # (J, I, K, D); the official std 0.1: larger W saturates the squash of s_j = sum over ~1000 votes
        self.weight = nn.Parameter(torch.randn(out_caps, in_caps, in_dim, out_dim) * init_std)
        self.routing = routing

    def forward(self, u: Tensor, activations: Tensor | None = None, *, diagnostics: bool = False) -> RoutingResult:
        votes = compute_votes(u, self.weight)  # (B, I, J, D)
        return self.routing(votes, activations, u, diagnostics=diagnostics)
