"""Fully connected capsule layer: one transformation matrix per (input, output) pair, then routing.

The votes u_hat_{j|i} = W_ij u_i are one product of a (B, K) block by a (K, J*D) block per input
capsule i, one batched matmul over i. Three storages of the (B, I, J, D) votes
(capslab.routing.backends.VotesLayout), the one the routing's chosen path reads
(capslab.routing.backends.votes_layout):

- ``"ibjd"``: stored (I, B, J, D), the matmul's own output. The matmul and both matmuls of its
  backward run on contiguous per-i blocks, the path that uses every thread (a strided output or
  input makes ATen loop over the 1152 small products on one thread). The fused agreement loop
  (capslab.routing.fused) reads this storage directly.
- ``"ijdb"``: stored (I, J, D, B), examples last, what the compiled CPU routing kernel reads
  (capslab.routing.kernel): per i, W_i^T (J*D, K) @ u_i^T (K, B), again contiguous per-i blocks.
- ``"bjid"``: stored (B, J, I, D) so that ``votes.transpose(1, 2)`` is contiguous and per-output sums
  are plain batched matmuls; costs one permuting copy of the votes and of their gradient.

W is never copied per example (ports that broadcast W across the batch spend a third to a half of
their step and most of their memory there).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capslab.buffers import scratch
from capslab.routing import backends
from capslab.routing.backends import VotesLayout
from capslab.routing.base import Routing, RoutingResult


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for t's device (bf16 votes halve the memory traffic)."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


class _VotesIBJD(torch.autograd.Function):
    """votes (I, B, J*D) = per i: u[:, i] (B, K) @ W_i (K, J*D), returned as a (B, I, J, D) view."""

    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor) -> Tensor:
        B, I, K = u.shape
        J, _, _, D = weight.shape
        dtype = _compute_dtype(u)
        ctx.dtypes = (u.dtype, weight.dtype)
        with torch.autocast(u.device.type, enabled=False):  # out= takes no autocast: cast explicitly
            ut = u.to(dtype).transpose(0, 1).contiguous()  # (I, B, K); 5 MB
            wt = weight.to(dtype).permute(1, 2, 0, 3).reshape(I, K, J * D)  # (I, K, J*D); 6 MB, not per example
            votes = scratch("capslab.layers.votes", (I, B, J * D), ut)  # reused across steps once free
            torch.bmm(ut, wt, out=votes)
        ctx.save_for_backward(ut, wt)
        return votes.view(I, B, J, D).transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ut, wt = ctx.saved_tensors
        I, B, K = ut.shape
        JD = wt.shape[-1]
        g = grad.to(ut.dtype).reshape(B, I, JD).transpose(0, 1)  # (I, B, J*D): any storage with (J, D) merged
        grad_u = grad_w = None
        if ctx.needs_input_grad[0]:  # contiguous per-i blocks keep ATen on its multi-threaded batched path
            grad_u = torch.bmm(g, wt.transpose(1, 2)).transpose(0, 1).to(ctx.dtypes[0])  # (B, I, K) view
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(ut.transpose(1, 2), g)  # (I, K, B) @ (I, B, J*D) -> (I, K, J*D)
            grad_w = gw.view(I, K, -1, grad.shape[-1]).permute(2, 0, 1, 3).to(ctx.dtypes[1])  # (J, I, K, D)
        return grad_u, grad_w


class _VotesIJDB(torch.autograd.Function):
    """votes (I, J*D, B) = per i: W_i^T (J*D, K) @ u[:, i]^T (K, B), returned as a (B, I, J, D) view."""

    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor) -> Tensor:
        B, I, K = u.shape
        J, _, _, D = weight.shape
        ut = u.permute(1, 2, 0).contiguous()  # (I, K, B); 5 MB
        wt = weight.permute(1, 0, 3, 2).reshape(I, J * D, K)  # (I, J*D, K); 6 MB, not per example
        votes = scratch("capslab.layers.votes_ijdb", (I, J * D, B), ut)  # reused across steps once free
        torch.bmm(wt, ut, out=votes)
        ctx.save_for_backward(ut, wt)
        return votes.view(I, J, D, B).permute(3, 0, 1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ut, wt = ctx.saved_tensors
        I, K, B = ut.shape
        J, D = grad.shape[2:]
        g = grad.permute(1, 2, 3, 0).reshape(I, J * D, B)  # a view when stored (I, J, D, B)
        grad_u = grad_w = None
        if ctx.needs_input_grad[0]:
            # (I, B, J*D) @ (I, J*D, K): K innermost, which the primary capsules' backward (a squash and a
            # permute) runs faster on than the (I, K, B) result of the other orientation (docs/performance.md)
            grad_u = torch.bmm(g.transpose(1, 2), wt).transpose(0, 1)  # (B, I, K) view
        if ctx.needs_input_grad[1]:
            gw = torch.bmm(g, ut.transpose(1, 2))  # (I, J*D, B) @ (I, B, K) -> (I, J*D, K)
            grad_w = gw.view(I, J, D, K).permute(1, 0, 3, 2)  # (J, I, K, D)
        return grad_u, grad_w


def compute_votes(u: Tensor, weight: Tensor, layout: VotesLayout | str = VotesLayout.BJID) -> Tensor:
    """u (B, I, K), weight (J, I, K, D) -> votes (B, I, J, D), stored per ``layout`` (module doc)."""
    layout = VotesLayout(layout)  # type: ignore[call-arg]  # a lookup by value: the doc is not asked for
    if layout is VotesLayout.IBJD:
        return _VotesIBJD.apply(u, weight)
    if layout is VotesLayout.IJDB:
        return _VotesIJDB.apply(u, weight)
    votes = torch.einsum("bik,jikd->bjid", u, weight)  # (B, J, I, D)
    return votes.contiguous().transpose(1, 2)  # (B, I, J, D) view


class ClassCapsules(nn.Module):
    """Votes u_hat_{j|i} = W_ij u_i with a separate (K x D) W per (i, j), handed to a routing plugin.

    The votes are stored as the routing's chosen path reads them (see the module doc).
    """

    def __init__(self, in_caps: int, in_dim: int, out_caps: int, out_dim: int, routing: Routing, init_std: float = 0.1):
        super().__init__()
        self.in_caps, self.in_dim, self.out_caps, self.out_dim = in_caps, in_dim, out_caps, out_dim
        # (J, I, K, D); the official std 0.1: larger W saturates the squash of s_j = sum over ~1000 votes
        self.weight = nn.Parameter(torch.randn(out_caps, in_caps, in_dim, out_dim) * init_std)
        self.routing = routing

    def forward(self, u: Tensor, activations: Tensor | None = None, *, diagnostics: bool = False) -> RoutingResult:
        fast = backends.route_from_weights(self.routing, u, self.weight, diagnostics)  # votes never stored
        if fast is not None:
            return fast
        votes = compute_votes(u, self.weight, backends.votes_layout(self.routing, u, diagnostics))  # (B, I, J, D)
        return self.routing(votes, activations, u, diagnostics=diagnostics)
