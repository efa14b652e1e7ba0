"""The Procedure-1 loop of :class:`capslab.AgreementRouting` as one autograd function.

Same equations as the plain loop (capslab.routing.agreement), on votes u (B, I, J, D) whose (J, D)
axes are contiguous (stored (I, B, J, D) by ClassCapsules, or (B, I, J, D)):

    c_r = couple(b_r)                          (B, J, I)
    s_r = sum_i c_r[:, j, i] u[:, i, j]         (B, J, D)   weighted_sum
    v_r = squash(s_r + bias)
    b_{r+1} = b_r + a_r,  a_r = u . v_r         (B, J, I)   agreement

What it saves over autograd through the plain loop:

- Gradient: autograd keeps one (B, I, J, D) gradient per use of the votes (2r - 1 uses) and adds
  them up. Here dL/du is built once as a sum of outer products,
      dL/du[b, i, j, :] = sum_r c_r[b, j, i] ds_r[b, j, :] + sum_r da_r[b, j, i] v_r[b, j, :]
  (``outer_sum``), and nothing of size (B, I, J, D) is saved besides the votes themselves.
- The contractions are single batched matmuls. The weighted sum is one (1, I) @ (I, D) product per
  (b, j): on the (I, B, J, D) storage the (B, J) axes merge into one batch axis of stride D. The
  agreement multiplies pairs of outputs (b, j..j+1) against a block-diagonal (2, 2*D) operand there,
  and all J outputs at once on other storages: g times the multiply-adds of the exact sums, but at
  matmul speed, which beats the exact matrix-vector products (einsum on these strided views copies
  the votes instead). Few, large operations on purpose: with 2 threads on a loaded machine every
  parallel region can cost a scheduler time slice, and versions that chunked the batch (for cache
  reuse) ran slower there (docs/performance.md, "Measurements behind the code").

The coupling keeps its own small autograd graph from the forward (b -> couple(b), B*J*I each), so any
subclass's ``couple`` works unchanged and is not recomputed; the squash of each iteration (B*J*D) is
recomputed under autograd in the backward, so any squash plugin works unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capslab.buffers import scratch
from capslab.routing.base import RoutingResult

# Outputs per agreement product on the (I, B, J, D) storage: g times the exact multiply-adds, but
# faster on 2 threads than both g = 1 (matrix-vector products) and g = J (all outputs at once);
# docs/performance.md, "Measurements behind the code".
AGREE_GROUP = 2


def fusable(votes: Tensor) -> bool:
    """True when the (J, D) axes of votes (B, I, J, D) are contiguous: (B, I, J*D) is then a view."""
    return votes.stride(3) == 1 and votes.stride(2) == votes.shape[3]


def by_output(u: Tensor, group: int = 1) -> Tensor | None:
    """u (B, I, J, D) fusable -> its (B*J/group, I, group*D) view, batch (b, group of outputs), where b's
    stride is J*D (as stored (I, B, J, D)); None for other storages."""
    B, I, J, D = u.shape
    if J % group or (B > 1 and u.stride(0) != J * D):
        return None
    return u.as_strided((B * J // group, I, group * D), (group * D, u.stride(1), 1))


def weighted_sum(c: Tensor, u: Tensor) -> Tensor:
    """c (B, J, I), u (B, I, J, D) fusable -> s[b, j] = sum_i c[b, j, i] u[b, i, j]   (B, J, D)."""
    B, I, J, D = u.shape
    per_output = by_output(u)
    if per_output is not None:  # one (1, I) @ (I, D) product per (b, j): no J-fold waste
        return torch.bmm(c.to(u.dtype).reshape(B * J, 1, I), per_output).view(B, J, D).to(c.dtype)
    full = torch.bmm(c.to(u.dtype), u.view(B, I, J * D))  # (B, J, I) @ (B, I, J*D) -> (B, J, J*D)
    return full.view(B, J, J, D).diagonal(dim1=1, dim2=2).transpose(1, 2).to(c.dtype)  # the j = j' blocks


def block_diagonal(v: Tensor) -> Tensor:
    """v (B, M, J, D) -> (B, M*J, J*D): row (m, j) holds v[:, m, j] in columns j*D .. j*D + D - 1."""
    B, M, J, D = v.shape
    out = v.new_zeros(B, M, J, J, D)
    out.diagonal(dim1=2, dim2=3).copy_(v.transpose(2, 3))  # out[b, m, j, j, d] = v[b, m, j, d]
    return out.view(B, M * J, J * D)


def agreement(u: Tensor, v: Tensor) -> Tensor:
    """u (B, I, J, D) fusable, v (B, J, D) -> a[b, j, i] = u[b, i, j] . v[b, j]   (B, J, I)."""
    B, I, J, D = u.shape
    g = AGREE_GROUP if by_output(u, AGREE_GROUP) is not None else J  # outputs per block-diagonal product
    bd = block_diagonal(v.to(u.dtype).view(B, J // g, g, D)).view(B * J // g, g, g * D)
    pairs = by_output(u, g) if g != J else None  # (B*J/g, I, g*D)
    if pairs is None:  # all J outputs in one product
        pairs = u.view(B, I, J * D)
    return torch.bmm(bd, pairs.transpose(1, 2)).view(B, J, I).to(v.dtype)  # @ (B*J/g, g*D, I)


def outer_sum(coefs: Tensor, vecs: list[Tensor], out: Tensor) -> None:
    """out (B, I, J*D) = sum_m coefs[:, m] (B, J, I) x vecs[m] (B, J, D), one matmul over (m, j).

    ``coefs`` (B, M, J, I) is filled by the caller as the terms appear (no concatenation copy).
    """
    B, M, J, I = coefs.shape
    bd = block_diagonal(torch.stack(vecs, 1).to(out.dtype))  # (B, M*J, J*D)
    torch.bmm(coefs.view(B, M * J, I).transpose(1, 2), bd, out=out)  # (B, I, M*J) @ (B, M*J, J*D)


def _squash(routing, s: Tensor) -> Tensor:
    return routing.squash(s + routing.bias if routing.bias is not None else s)


class FusedAgreement(torch.autograd.Function):
    """(u (B, I, J, D) fusable, b0 (B, J, I), routing, iterations, detach_inner, flags, *params) -> v (B, J, D).

    ``flags``: (b0 is constant over i, the backward will run).
    """

    @staticmethod
    def forward(ctx, u, b0, routing, iterations, detach_inner, flags, *params):
        with torch.autocast(u.device.type, enabled=False):  # bf16 votes: contractions in bf16, the rest in fp32
            return FusedAgreement._forward(ctx, u, b0, routing, iterations, detach_inner, flags, params)

    @staticmethod
    def _forward(ctx, u, b0, routing, iterations, detach_inner, flags, params):
        uniform_start, graph = flags
        b = b0.to(torch.promote_types(b0.dtype, torch.float32))  # logits in fp32 even for bf16 votes
        couplings, ss = [], []  # (logits, coupling) with couple's graph, and the sums, of each iteration
        for r in range(iterations):
            with torch.enable_grad():  # couple's own graph, kept for the backward (no recomputation)
                b_in = b.requires_grad_(graph and r > 0)
                c = routing.couple(b_in)  # (B, J, I)
            couplings.append((b_in, c if graph else None))
            c = c.detach()
            if r == 0 and uniform_start:  # b0 constant over i, so is c (couple acts per input): one plain sum
                B, I, J, D = u.shape
                s = u.view(B, I, J * D).sum(1, dtype=c.dtype).view(B, J, D) * c[..., :1]
            else:
                s = weighted_sum(c, u)  # (B, J, D)
            v = _squash(routing, s)
            ss.append(s)
            if r < iterations - 1:  # the last update would only feed diagnostics (the plain loop's job)
                a = agreement(u, v)  # (B, J, I)
                b = a.add_(b.detach())  # in place: a fresh (B, J, I) tensor costs page faults
        ctx.routing, ctx.detach_inner, ctx.n, ctx.couplings = routing, detach_inner, iterations, couplings
        ctx.save_for_backward(u, *ss, *params)
        return v

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        with torch.autocast(grad_v.device.type, enabled=False):
            return FusedAgreement._backward(ctx, grad_v)

    @staticmethod
    def _backward(ctx, grad_v):
        routing, detach_inner, R = ctx.routing, ctx.detach_inner, ctx.n
        couplings = ctx.couplings  # kept (retain_graph): a graph may be differentiated more than once
        u, *rest = ctx.saved_tensors
        ss, params = rest[:R], rest[R:]
        B, I, J, D = u.shape
        want_u = ctx.needs_input_grad[0]
        want_p = [ctx.needs_input_grad[6 + k] for k in range(len(params))]
        trainable = [p for p, w in zip(params, want_p) if w]
        # the chain back through the logits matters if the votes get gradients through it, or a parameter
        chain = (want_u and not detach_inner) or bool(trainable)
        n_terms = (1 if detach_inner else 2 * R - 1) if want_u else 0  # one term per use of u
        coefs = scratch("capslab.routing.coefs", (B, n_terms, J, I), u)  # dL/du = sum_m coefs[:, m] x vecs[m]
        vecs: list[Tensor] = []
        grad_p: list[Tensor | None] = [None] * len(params)
        g_b = None  # dL/db_r summed over the later iterations (every b_r' with r' > r contains a_r)
        g_v = grad_v
        for r in reversed(range(R)):
            with torch.enable_grad():  # v_r = squash(s_r + bias): small, recomputed
                s = ss[r].detach().requires_grad_()
                grads = torch.autograd.grad(_squash(routing, s), [s, *trainable], g_v, allow_unused=True)
            b, c = couplings[r]  # c = couple(b), with its graph
            g_s = grads[0]
            _accumulate(grad_p, want_p, grads[1:])
            if want_u and (r == R - 1 or not detach_inner):  # s_r = sum_i c_r u
                coefs[:, len(vecs)].copy_(c.detach())
                vecs.append(g_s)
            if not (chain and c.requires_grad):
                break
            g_c = agreement(u, g_s)  # (B, J, I) = dL/dc_r
            grads = torch.autograd.grad(
                c, [b, *trainable] if r > 0 else trainable, g_c, retain_graph=True, allow_unused=True
            )
            if r == 0:  # c_0 depends on parameters of couple only
                _accumulate(grad_p, want_p, grads)
                break
            _accumulate(grad_p, want_p, grads[1:])
            g_b = grads[0] if g_b is None else grads[0].add_(g_b)
            if want_u and not detach_inner:  # a_{r-1} = u . v_{r-1}
                coefs[:, len(vecs)].copy_(g_b)
                vecs.append(_squash(routing, ss[r - 1]))
            g_v = weighted_sum(g_b, u)  # dL/dv_{r-1}, from a_{r-1} only
        grad_u = None
        if want_u:
            assert len(vecs) == n_terms  # every slot of the reused coefs was written
            grad_u = scratch("capslab.routing.grad_votes", (B, I, J * D), u)
            outer_sum(coefs, vecs, grad_u)
            grad_u = grad_u.view(B, I, J, D)
        return (grad_u, None, None, None, None, None, *grad_p)


def _accumulate(total: list, want: list[bool], grads) -> None:
    """Add the gradients of the trainable parameters (``grads``, in order) into ``total``."""
    it = iter(grads)
    for k, w in enumerate(want):
        g = next(it) if w else None
        if g is not None:
            total[k] = g if total[k] is None else total[k] + g


def fused_agree(
    routing, votes: Tensor, b0: Tensor, iterations: int, detach_inner: bool, uniform_start: bool = False
) -> RoutingResult:
    """The loop on fusable votes (B, I, J, D) from initial logits b0 (B, J, I) that need no gradient; no
    diagnostics (the plain loop records those).

    ``uniform_start``: b0 is constant over the inputs i (zeros in Procedure 1), so the first sum is plain.
    """
    params = list(routing.parameters())
    graph = torch.is_grad_enabled() and (votes.requires_grad or any(p.requires_grad for p in params))
    v = FusedAgreement.apply(votes, b0, routing, iterations, detach_inner, (uniform_start, graph), *params)
    return RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))
