"""Dynamic routing on the CPU as compiled loops (numba): one pass over the votes per iteration.

The operator path (capslab.routing.fused) runs every contraction of Procedure 1 as its own batched
product, so the 94 MB of votes (CapsNet, batch 128) stream from memory about ten times per training
step. Here the examples are the vector lanes (every inner loop runs over B, contiguous), and each
input capsule's agreement, coupling and weighted sum are computed in one visit per iteration. Two
entry points: :func:`route_weights` (what :class:`capslab.ClassCapsules` uses) forms each input
capsule's votes W_i u_i where they are used and writes the gradients of W and u directly, so no
(B, I, J, D) tensor exists; :func:`route` reads votes stored (I, J, D, B) and writes their gradient.
Same equations as
:class:`capslab.AgreementRouting`'s loop, with b_ij = 0 at the start:

    c_r = softmax_j(b_r)  (leaky: over [0 | b_r], the sink dropped; or max-min normalised, ``max_min``)
    s_r = sum_i c_r u + bias,  v_r = squash(s_r)  (the ``sabour`` squash, eps inside the root)
    b_{r+1} = b_r + u . v_r

It covers that case only: a routing whose coupling is one of those (registered with
``backends.compiled_coupling``), the ``sabour`` squash, float32/float64 votes on the CPU, no
diagnostics; capslab.routing.backends decides. Everything else (and every machine without numba) takes
the operator path.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch
from torch import Tensor

from capslab.buffers import scratch
from capslab.routing import backends
from capslab.routing.base import RoutingResult


@functools.cache
def available() -> bool:
    """numba is installed (it is a dependency; a platform without its wheels gets the operator path)."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def loops():
    """The compiled loops, imported on first use: numba adds ~55 MB to a process that never routes here.

    numba's thread pool is sized once, when numba is first imported: to torch's thread count (unless
    NUMBA_NUM_THREADS is set), not to every core. A pool larger than the threads used makes idle pool
    threads compete with other processes on the machine: two comparison runs of one thread each ran the
    CapsNet step 2-5x slower, the kernel and the operator path alike (docs/performance.md)."""
    import os

    os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))
    from capslab.routing import kernel_loops

    return kernel_loops


def stored_for_kernel(votes: Tensor) -> bool:
    """True when votes (B, I, J, D) are stored (I, J, D, B), the storage :func:`route` reads."""
    return votes.permute(1, 2, 3, 0).is_contiguous()


def route(routing, votes: Tensor, iterations: int, detach_inner: bool) -> RoutingResult:
    """The loop of ``routing`` (where capslab.routing.backends chose it) on votes (B, I, J, D) stored (I, J, D, B)."""
    return _route(routing, votes, None, None, iterations, detach_inner)


def route_weights(routing, u: Tensor, weight: Tensor, iterations: int, detach_inner: bool) -> RoutingResult | None:
    """The loop of ``routing`` on the votes W_ij u_i of input poses u (B, I, K) and transformation
    matrices weight (J, I, K, D), computed where they are used and never stored; None when W and u
    differ in dtype or device."""
    if weight.dtype != u.dtype or weight.device != u.device:
        return None
    return _route(routing, None, u, weight, iterations, detach_inner)


def _route(routing, votes, u, weight, iterations, detach_inner) -> RoutingResult:
    coupling = backends.kernel_coupling(routing)
    code = backends.KERNEL_COUPLING_NAMES.index(coupling)  # kernel_loops.SOFTMAX, LEAKY, MAX_MIN
    bounds = (routing.params.lb, routing.params.ub) if coupling == "max_min" else (0.0, 1.0)
    bias = routing.bias
    grads = [t.requires_grad for t in (votes, u, weight, bias) if t is not None]
    backward = torch.is_grad_enabled() and any(grads)
    config = (iterations, (code, *bounds), routing.squash.params.eps, detach_inner, backward)
    v = KernelLoop.apply(votes, u, weight, bias, config)
    return RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class KernelLoop(torch.autograd.Function):
    """(votes (B, I, J, D) stored (I, J, D, B), or None and then input poses u (B, I, K) and
    transformation matrices weight (J, I, K, D); bias (J, D) or None;
    config (iterations, (coupling code, lb, ub), eps, detach_inner, a backward may follow)) -> v (B, J, D)."""

    @staticmethod
    def forward(ctx, votes, u, weight, bias, config):
        iterations, coupling, eps, detach_inner, backward = config
        if votes is not None:
            B, I, J, D = votes.shape
            like = votes
            store = votes.permute(1, 2, 3, 0)  # (I, J, D, B), contiguous
            wt = ut = votes.new_empty(0, 1, 1)
        else:
            (B, I, K), (J, D) = u.shape, weight.shape[::3]
            like = u
            store = u.new_empty(0, J, D, B)  # no votes: the loops compute them from wt and ut
            ut = u.detach().permute(1, 2, 0).contiguous()  # (I, K, B); 5 MB
            wt = weight.detach().permute(1, 0, 3, 2).reshape(I, J * D, K)  # (I, J*D, K); 6 MB, not per example
        bias_t = bias.detach().to(like.dtype) if bias is not None else like.new_zeros(J, D)
        L = loops()
        threads = L.set_threads(torch.get_num_threads())
        ss = like.new_empty(iterations, J, D, B)
        vs = like.new_empty(iterations, J, D, B)
        if votes is None:  # the first iteration's plain sum over i, as one matrix product (faster than the loops)
            ss[0].view(J * D, B).copy_(torch.einsum("ink,ikb->nb", wt, ut))
        slots = max(iterations - 1, 1) if backward else 1
        cs = scratch("capslab.routing.kernel.couplings", (slots, I, J, B), like)
        spans = like.new_empty(slots, I, B)
        lg = scratch("capslab.routing.kernel.logits", (I, J, B), like)
        parts = like.new_empty(threads, J, D, B)
        source = L.Votes(_np(store), _np(wt), _np(ut), votes is None)
        loop = L.Loop(iterations, *coupling, eps, like.dtype == torch.float32, threads)
        saved = L.Saved(_np(ss), _np(cs), _np(vs), _np(spans))
        L.forward(source, _np(bias_t), loop, saved, L.ForwardScratch(_np(lg), _np(parts)))
        ctx.coupling, ctx.eps, ctx.detach_inner = coupling, eps, detach_inner
        ctx.save_for_backward(store, wt, ut, ss, cs, vs, spans)
        return vs[-1].permute(2, 0, 1)  # (B, J, D) view

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        store, wt, ut, ss, cs, vs, spans = ctx.saved_tensors
        want_votes, want_u, want_w, want_bias = ctx.needs_input_grad[:4]
        R, J, D, B = ss.shape
        I = cs.shape[1]
        L = loops()
        threads = L.set_threads(torch.get_num_threads())
        from_weights = not store.shape[0]
        if not from_weights:  # votes given: their gradient is written out
            grad_store = scratch("capslab.routing.kernel.grad_votes", store.shape, ss)  # (I, J, D, B)
            grad_wt = grad_ut = wt
        else:  # straight into the gradients of W and u
            grad_store = store
            grad_wt = torch.empty_like(wt)  # (I, J*D, K)
            grad_ut = wt.new_empty(I, B, wt.shape[2])  # (I, B, K): K innermost, as the primary capsules need
        g_b = scratch("capslab.routing.kernel.logit_grads", (max(R - 1, 1), I, J, B), ss)
        parts = ss.new_empty(threads, J, D, B)
        grad_s = torch.empty_like(ss)
        chain = not ctx.detach_inner or want_bias
        L.backward(
            L.Votes(_np(store), _np(wt), _np(ut), from_weights),
            L.Saved(_np(ss), _np(cs), _np(vs), _np(spans)),
            _np(grad_v.to(ss.dtype).permute(1, 2, 0).contiguous()),
            L.Loop(R, *ctx.coupling, ctx.eps, ss.dtype == torch.float32, threads),
            ctx.detach_inner,
            chain,
            L.BackwardScratch(_np(g_b), _np(parts)),
            L.Grads(_np(grad_store), _np(grad_wt), _np(grad_ut), _np(grad_s)),
        )
        grad_votes = grad_store.permute(3, 0, 1, 2) if want_votes else None
        grad_u = grad_ut.transpose(0, 1) if want_u else None  # (B, I, K)
        grad_w = grad_wt.view(I, J, D, -1).permute(1, 0, 3, 2) if want_w else None  # (J, I, K, D)
        grad_bias = grad_s.sum((0, 3)) if want_bias else None
        return grad_votes, grad_u, grad_w, grad_bias, None
