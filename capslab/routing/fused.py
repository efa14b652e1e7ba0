"""The Procedure-1 loop of :class:`capslab.AgreementRouting` as one autograd function.

Same equations as the plain loop (capslab.routing.agreement), on votes u stored (B, I, J, D):

    c_r = couple(b_r)                          (B, J, I)
    s_r = sum_i c_r[:, j, i] u[:, i, j]         (B, J, D)   weighted_sum
    v_r = squash(s_r + bias)
    b_{r+1} = b_r + a_r,  a_r = u . v_r         (B, J, I)   agreement

What it saves over autograd through the plain loop:

- Gradient: autograd keeps one (B, I, J, D) gradient per use of the votes (2r - 1 uses) and adds
  them up. Here dL/du is built once as a sum of outer products,
      dL/du[b, i, j, :] = sum_r c_r[b, j, i] ds_r[b, j, :] + sum_r da_r[b, j, i] v_r[b, j, :]
  (``outer_sum``), and nothing of size (B, I, J, D) is saved besides the votes themselves.
- Memory traffic: routing is per example, so both passes run over chunks of examples whose votes
  (CHUNK_BYTES) stay in cache across the 2r - 1 forward and 2(r - 1) backward contractions; the
  votes are read from memory about once per pass instead of once per contraction.
- The two contractions are matmuls over the flattened (J*D) axis against a block-diagonal operand:
  10x the multiply-adds of the exact sums, but one streaming pass at matmul speed (einsum on these
  strided views copies the votes instead).

The small per-iteration maps (couple, squash, bias; tensors of B*J*I or B*J*D) are recomputed under
autograd in the backward, so any subclass's ``couple`` and any squash plugin work unchanged, as long
as they act on each example independently (the chunking relies on it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from capslab.buffers import scratch
from capslab.routing.base import RoutingResult, coupling_entropy, stack_stats

# Votes per chunk of examples: a few MB, so that a chunk stays in the last-level cache while it is
# read 2r - 1 times (larger chunks spill, smaller ones pay per-operation overhead).
CHUNK_BYTES = 6 << 20


def _chunks(u: Tensor) -> list[tuple[int, int]]:
    B = u.shape[0]
    n = max(1, min(B, CHUNK_BYTES // max(1, u[0].numel() * u.element_size())))
    return [(lo, min(B, lo + n)) for lo in range(0, B, n)]


def weighted_sum(c: Tensor, u: Tensor) -> Tensor:
    """c (B, J, I), u (B, I, J, D) contiguous -> s[b, j] = sum_i c[b, j, i] u[b, i, j]   (B, J, D)."""
    B, I, J, D = u.shape
    full = torch.bmm(c, u.view(B, I, J * D))  # (B, J, I) @ (B, I, J*D) -> (B, J, J*D)
    return full.view(B, J, J, D).diagonal(dim1=1, dim2=2).transpose(1, 2)  # (B, J, D): the j = j' blocks


def block_diagonal(v: Tensor) -> Tensor:
    """v (B, M, J, D) -> (B, M*J, J*D): row (m, j) holds v[:, m, j] in columns j*D .. j*D + D - 1."""
    B, M, J, D = v.shape
    out = v.new_zeros(B, M, J, J, D)
    out.diagonal(dim1=2, dim2=3).copy_(v.transpose(2, 3))  # out[b, m, j, j, d] = v[b, m, j, d]
    return out.view(B, M * J, J * D)


def agreement(u: Tensor, v: Tensor) -> Tensor:
    """u (B, I, J, D) contiguous, v (B, J, D) -> a[b, j, i] = u[b, i, j] . v[b, j]   (B, J, I)."""
    B, I, J, D = u.shape
    return torch.bmm(block_diagonal(v.unsqueeze(1)), u.view(B, I, J * D).transpose(1, 2))  # (B, J, J*D) @ (B, J*D, I)


def outer_sum(coefs: Tensor, vecs: list[Tensor], out: Tensor) -> None:
    """out (B, I, J*D) = sum_m coefs[:, m] (B, J, I) x vecs[m] (B, J, D), one matmul over (m, j).

    ``coefs`` (B, M, J, I) is filled by the caller as the terms appear (no concatenation copy).
    """
    B, M, J, I = coefs.shape
    torch.bmm(coefs.view(B, M * J, I).transpose(1, 2), block_diagonal(torch.stack(vecs, 1)), out=out)


def _squash(routing, s: Tensor) -> Tensor:
    return routing.squash(s + routing.bias if routing.bias is not None else s)


class FusedAgreement(torch.autograd.Function):
    """forward(u (B, I, J, D) contiguous, b0 (B, J, I), routing, iterations, detach_inner, diag, *params) -> v (B, J, D)."""

    @staticmethod
    def forward(ctx, u, b0, routing, iterations, detach_inner, diag, *params):
        B, I, J, D = u.shape
        R = iterations
        bs = u.new_empty(R, B, J, I)  # the logits entering each iteration (the backward recomputes c from them)
        ss, vs = u.new_empty(R, B, J, D), u.new_empty(R, B, J, D)
        bs[0] = b0
        for lo, hi in _chunks(u):
            uc, b = u[lo:hi], bs[0, lo:hi]
            w = (hi - lo) / B  # the diagnostics are means over examples: chunk weight
            for r in range(R):
                c = routing.couple(b)  # (b, J, I)
                s = weighted_sum(c, uc)  # (b, J, D)
                ss[r, lo:hi], vs[r, lo:hi] = s, _squash(routing, s)
                if diag is not None:
                    diag["entropy"][r] += w * coupling_entropy(c, dim=1)
                if r < R - 1 or diag is not None:  # the last update only feeds the diagnostics
                    a = agreement(uc, vs[r, lo:hi])  # (b, J, I)
                    if diag is not None:
                        diag["delta"][r] += w * a.abs().mean()
                    b = b + a
                    if r < R - 1:
                        bs[r + 1, lo:hi] = b
            if diag is not None:
                diag["coupling"][lo:hi] = c.transpose(1, 2)  # (b, I, J)
        ctx.routing, ctx.detach_inner = routing, detach_inner
        ctx.save_for_backward(u, bs, ss, *params)
        return vs[R - 1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        routing, detach_inner = ctx.routing, ctx.detach_inner
        u, bs, ss, *params = ctx.saved_tensors
        B, I, J, D = u.shape
        R = bs.shape[0]
        want_u = ctx.needs_input_grad[0]
        want_p = [ctx.needs_input_grad[6 + k] for k in range(len(params))]
        trainable = [p for p, w in zip(params, want_p) if w]
        # the chain back through the logits matters if the votes get gradients through it, or a parameter
        chain = (want_u and not detach_inner) or bool(trainable)
        n_terms = (1 if detach_inner else 2 * R - 1) if want_u else 0  # one term per use of u
        grad_u = scratch("capslab.routing.grad_votes", (B, I, J * D), u) if want_u else None
        grad_p: list[Tensor | None] = [None] * len(params)
        for lo, hi in _chunks(u):
            uc, g_v = u[lo:hi], grad_v[lo:hi]
            coefs = u.new_empty(hi - lo, n_terms, J, I)  # dL/du = sum_m coefs[:, m] x vecs[m]
            vecs: list[Tensor] = []
            g_b = None  # dL/db_r summed over the later iterations (every b_r' with r' > r contains a_r)
            for r in reversed(range(R)):
                with torch.enable_grad():  # v_r = squash(s_r + bias), c_r = couple(b_r): small, recomputed
                    s = ss[r, lo:hi].detach().requires_grad_()
                    grads = torch.autograd.grad(_squash(routing, s), [s, *trainable], g_v, allow_unused=True)
                    b = bs[r, lo:hi].detach().requires_grad_(chain and r > 0)
                    c = routing.couple(b)  # (b, J, I); needs grad if b does or couple has parameters
                g_s = grads[0]
                _accumulate(grad_p, want_p, grads[1:])
                if want_u and (r == R - 1 or not detach_inner):  # s_r = sum_i c_r u
                    coefs[:, len(vecs)].copy_(c.detach()), vecs.append(g_s)
                if not (chain and c.requires_grad):
                    break
                g_c = agreement(uc, g_s)  # (b, J, I) = dL/dc_r
                grads = torch.autograd.grad(c, [b, *trainable] if r > 0 else trainable, g_c, allow_unused=True)
                if r == 0:
                    _accumulate(grad_p, want_p, grads)
                    break
                _accumulate(grad_p, want_p, grads[1:])
                g_b = grads[0] if g_b is None else g_b + grads[0]
                if want_u and not detach_inner:  # a_{r-1} = u . v_{r-1}
                    coefs[:, len(vecs)].copy_(g_b), vecs.append(_squash(routing, ss[r - 1, lo:hi]))
                g_v = weighted_sum(g_b, uc)  # dL/dv_{r-1}, from a_{r-1} only
            if want_u:
                outer_sum(coefs, vecs, grad_u[lo:hi])
        return (grad_u.view(B, I, J, D) if want_u else None, None, None, None, None, None, *grad_p)


def _accumulate(total: list, want: list[bool], grads) -> None:
    """Add the gradients of the trainable parameters (``grads``, in order) into ``total``."""
    it = iter(grads)
    for k, w in enumerate(want):
        g = next(it) if w else None
        if g is not None:
            total[k] = g if total[k] is None else total[k] + g


def fused_agree(routing, votes: Tensor, b0: Tensor, iterations: int, detach_inner: bool,
                diagnostics: bool) -> RoutingResult:
    """The loop on contiguous votes (B, I, J, D) from initial logits b0 (B, J, I) that need no gradient."""
    diag = None
    if diagnostics:
        diag = {"entropy": [0.0] * iterations, "delta": [0.0] * iterations, "coupling": votes.new_empty(votes.shape[:3])}
    v = FusedAgreement.apply(votes, b0, routing, iterations, detach_inner, diag, *routing.parameters())
    result = RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))
    if diag is not None:
        result.coupling = diag["coupling"]  # (B, I, J)
        result.logit_change = stack_stats(diag["delta"])
        result.entropy = stack_stats(diag["entropy"])
    return result
