"""Dynamic routing on the CPU as compiled loops (numba): one pass over the votes per iteration.

The operator path (capslab.routing.fused) runs every contraction of Procedure 1 as its own batched
product, so the 94 MB of votes (CapsNet, batch 128) stream from memory about ten times per training
step. Here the votes are stored (I, J, D, B), examples last: the examples are the vector lanes, and
each input capsule's agreement, coupling and weighted sum are computed in one visit, so an iteration
reads the votes once and nothing of their size is written in the forward. The backward reads them
once per iteration after the first and writes their gradient once. Same equations as
:class:`capslab.AgreementRouting`'s loop, with b_ij = 0 at the start:

    c_r = softmax_j(b_r)  (leaky: over [0 | b_r], the sink dropped)
    s_r = sum_i c_r u + bias,  v_r = squash(s_r)  (the ``sabour`` squash, eps inside the root)
    b_{r+1} = b_r + u . v_r

It covers that case only: a routing whose ``kernel_coupling()`` names one of those couplings, the
``sabour`` squash, float32/float64 votes on the CPU, no diagnostics. Everything else (and every
machine without numba) takes the operator path.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch
from torch import Tensor

from capslab.buffers import scratch
from capslab.routing.base import RoutingResult


@functools.cache
def available() -> bool:
    """numba is installed (it is a dependency; a platform without its wheels gets the operator path)."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def loops():
    """The compiled loops, imported on first use: numba adds ~55 MB to a process that never routes here."""
    from capslab.routing import kernel_loops

    return kernel_loops


def preferred(routing, u: Tensor, diagnostics: bool) -> bool:
    """True when ``routing``'s loop on votes computed from ``u`` will run here (on votes stored
    (I, J, D, B), see capslab.layers.class_caps)."""
    return (
        available()
        and getattr(routing, "compiled", False)
        and routing.zero_start()
        and routing.kernel_coupling() in ("softmax", "leaky_softmax")
        and getattr(routing.squash, "kernel", None) == "sabour"
        and not diagnostics
        and u.device.type == "cpu"
        and u.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def applies(routing, votes: Tensor, diagnostics: bool) -> bool:
    """True when this kernel computes ``routing``'s loop (from zero logits) on ``votes`` (B, I, J, D)."""
    return preferred(routing, votes, diagnostics) and votes.permute(1, 2, 3, 0).is_contiguous()


def route(routing, votes: Tensor, iterations: int, detach_inner: bool) -> RoutingResult:
    """The loop of ``routing`` (where :func:`applies`) on votes (B, I, J, D) stored (I, J, D, B)."""
    leaky = routing.kernel_coupling() == "leaky_softmax"
    bias = routing.bias
    backward = torch.is_grad_enabled() and (votes.requires_grad or (bias is not None and bias.requires_grad))
    v = KernelRouting.apply(votes, bias, iterations, leaky, routing.squash.params.eps, detach_inner, backward)
    return RoutingResult(v, torch.linalg.vector_norm(v, dim=-1))


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


class KernelRouting(torch.autograd.Function):
    """(u (B, I, J, D) stored (I, J, D, B), bias (J, D) or None, iterations, leaky, eps, detach_inner,
    backward: a backward may follow) -> v (B, J, D)."""

    @staticmethod
    def forward(ctx, u, bias, iterations, leaky, eps, detach_inner, backward):
        B, I, J, D = u.shape
        store = u.permute(1, 2, 3, 0)  # (I, J, D, B), contiguous
        bias_t = bias.detach().to(u.dtype) if bias is not None else u.new_zeros(J, D)
        threads = loops().set_threads(torch.get_num_threads())
        ss = u.new_empty(iterations, J, D, B)
        vs = u.new_empty(iterations, J, D, B)
        cs = scratch("capslab.routing.kernel.couplings", (max(iterations - 1, 1) if backward else 1, I, J, B), u)
        lg = scratch("capslab.routing.kernel.logits", (I, J, B), u)
        parts = u.new_empty(threads, J, D, B)
        loops().forward(_np(store), _np(bias_t), iterations, leaky, eps, u.dtype == torch.float32, threads,
                 _np(ss), _np(cs), _np(vs), _np(lg), _np(parts))
        ctx.leaky, ctx.eps, ctx.detach_inner = leaky, eps, detach_inner
        ctx.save_for_backward(u, ss, cs, vs)
        return vs[-1].permute(2, 0, 1)  # (B, J, D) view

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v):
        u, ss, cs, vs = ctx.saved_tensors
        want_u, want_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        R, J, D, B = ss.shape
        store = u.permute(1, 2, 3, 0)
        threads = loops().set_threads(torch.get_num_threads())
        grad_store = scratch("capslab.routing.kernel.grad_votes", store.shape, u)  # (I, J, D, B)
        g_b = scratch("capslab.routing.kernel.logit_grads", (max(R - 1, 1), store.shape[0], J, B), u)
        parts = u.new_empty(threads, J, D, B)
        grad_s = torch.empty_like(ss)
        chain = not ctx.detach_inner or want_bias
        loops().backward(_np(store), _np(ss), _np(cs), _np(vs), _np(grad_v.to(u.dtype).permute(1, 2, 0).contiguous()),
                  ctx.leaky, ctx.eps, ctx.detach_inner, chain, threads, _np(g_b), _np(parts), _np(grad_store),
                  _np(grad_s))
        grad_u = grad_store.permute(3, 0, 1, 2) if want_u else None
        grad_bias = grad_s.sum((0, 3)) if want_bias else None
        return grad_u, grad_bias, None, None, None, None, None
