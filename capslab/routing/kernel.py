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

import math

import numpy as np
import torch
from torch import Tensor

from capslab.buffers import scratch
from capslab.routing.base import RoutingResult

try:
    import numba as nb
except ImportError:  # pragma: no cover - numba is a dependency; a platform without wheels falls back
    nb = None

# Reassociation lets the compiler vectorise the sums; no finite-math assumptions (NaN stays NaN).
_FAST = {"reassoc", "contract", "nsz", "arcp"}


def _jit(**kw):
    return nb.njit(fastmath=_FAST, error_model="numpy", cache=True, nogil=True, **kw)


if nb is not None:

    @_jit()
    def _squash(s, eps, v):
        """v (J, D, L) = s * sqrt(|s|^2 + eps) / (1 + |s|^2), the norm over D, per (j, lane)."""
        J, D, L = s.shape
        n = np.empty(L, s.dtype)
        for j in range(J):
            n[:] = 0
            for d in range(D):
                for lane in range(L):
                    n[lane] += s[j, d, lane] * s[j, d, lane]
            for lane in range(L):
                n[lane] = math.sqrt(n[lane] + eps) / (1 + n[lane])
            for d in range(D):
                for lane in range(L):
                    v[j, d, lane] = s[j, d, lane] * n[lane]

    @_jit()
    def _squash_grad(s, gv, eps, gs):
        """gs (J, D, L) = dL/ds from gv = dL/dv, v = f(n) s with n = |s|^2:  f gv + 2 f'(n) (gv . s) s."""
        J, D, L = s.shape
        n = np.empty(L, s.dtype)
        dot = np.empty(L, s.dtype)
        for j in range(J):
            n[:] = 0
            dot[:] = 0
            for d in range(D):
                for lane in range(L):
                    n[lane] += s[j, d, lane] * s[j, d, lane]
                    dot[lane] += s[j, d, lane] * gv[j, d, lane]
            for lane in range(L):
                root = math.sqrt(n[lane] + eps)
                f = root / (1 + n[lane])
                f2 = (1 - n[lane] - 2 * eps) / (root * (1 + n[lane]) * (1 + n[lane]))  # 2 f'(n)
                n[lane] = f
                dot[lane] *= f2
            for d in range(D):
                for lane in range(L):
                    gs[j, d, lane] = n[lane] * gv[j, d, lane] + dot[lane] * s[j, d, lane]

    @_jit()
    def _exp(x, bits, fast):
        """x (J, L) <- exp(x) for x <= 0. ``fast`` (float32): a polynomial that vectorises, within 2e-7
        relative of exp, ~3x faster than libm's; arguments below -87 give 2^-126 (float32's least normal)."""
        J, L = x.shape
        if not fast:
            for j in range(J):
                for lane in range(L):
                    x[j, lane] = math.exp(x[j, lane])
            return
        t_ = x.dtype.type
        two = bits.view(np.float32)  # 2^q, assembled from its exponent bits
        for j in range(J):
            for lane in range(L):
                t = max(x[j, lane], t_(-87.0))
                q = math.floor(t * t_(1.4426950408889634) + t_(0.5))  # t = q ln2 + r, |r| <= ln2 / 2
                r = t - q * t_(0.693145751953125) - q * t_(1.428606765330187e-06)
                p = t_(1) + r * (t_(1) + r * (t_(0.5) + r * (t_(1 / 6) + r * (t_(1 / 24) + r * (t_(1 / 120)
                                                                                          + r * t_(1 / 720))))))
                bits[j, lane] = (np.int32(q) + 127) << 23
                x[j, lane] = p * two[j, lane]

    @_jit()
    def _uniform(J, leaky, dtype):
        return dtype.type(1.0 / (J + 1) if leaky else 1.0 / J)

    @_jit()
    def _softmax(lg, leaky, fast, top, bits, c):
        """c (J, L) = softmax over j of the logits lg (J, L); leaky: over [0 | lg], the sink dropped."""
        J, L = lg.shape
        for lane in range(L):
            top[lane] = 0 if leaky else lg[0, lane]
        for j in range(J):
            for lane in range(L):
                top[lane] = max(top[lane], lg[j, lane])
        for j in range(J):
            for lane in range(L):
                c[j, lane] = lg[j, lane] - top[lane]
        _exp(c, bits, fast)
        for lane in range(L):
            top[lane] = math.exp(-top[lane]) if leaky else 0  # now the total: the sink's exp(0 - top)
        for j in range(J):
            for lane in range(L):
                top[lane] += c[j, lane]
        for lane in range(L):
            top[lane] = 1 / top[lane]
        for j in range(J):
            for lane in range(L):
                c[j, lane] *= top[lane]

    @_jit()
    def _share(n, threads, t):
        """Thread t's range of n inputs."""
        return t * n // threads, (t + 1) * n // threads

    @_jit(parallel=True)
    def _forward(u, bias, iterations, leaky, eps, fast, threads, ss, cs, vs, lg, parts):
        """u (I, J, D, B) -> ss[r] = s_r (J, D, B) (bias included), vs[r] = v_r, cs[r - 1] = c_r (I, J, B)
        for r >= 1 (c_0 is uniform; a single cs slot, when no backward follows, holds the latest c_r).
        Scratch: lg (I, J, B) logits, parts (threads, J, D, B) partial sums.

        Threads split the inputs; every inner loop runs over the B examples, contiguous."""
        I, J, D, B = u.shape
        eps = u.dtype.type(eps)
        c0 = _uniform(J, leaky, u.dtype)
        lg[:] = 0
        for r in range(iterations):
            v = vs[r - 1]
            for t in nb.prange(threads):
                p = parts[t]
                p[:] = 0
                top = np.empty(B, u.dtype)
                bits = np.empty((J, B), np.int32)
                i0, i1 = _share(I, threads, t)
                for i in range(i0, i1):
                    if r == 0:  # uniform coupling: a plain sum (scaled below)
                        for j in range(J):
                            for d in range(D):
                                for b in range(B):
                                    p[j, d, b] += u[i, j, d, b]
                        continue
                    for j in range(J):  # b_r = b_{r-1} + u . v_{r-1}
                        for d in range(D):
                            for b in range(B):
                                lg[i, j, b] += u[i, j, d, b] * v[j, d, b]
                    c = cs[(r - 1) % cs.shape[0], i]
                    _softmax(lg[i], leaky, fast, top, bits, c)
                    for j in range(J):  # this input's share of s_r
                        for d in range(D):
                            for b in range(B):
                                p[j, d, b] += c[j, b] * u[i, j, d, b]
            out = ss[r]
            out[:] = parts[0]
            for t in range(1, threads):
                out += parts[t]
            scale = c0 if r == 0 else u.dtype.type(1)
            for j in range(J):
                for d in range(D):
                    for b in range(B):
                        out[j, d, b] = out[j, d, b] * scale + bias[j, d]
            _squash(out, eps, vs[r])

    @_jit(parallel=True)
    def _backward(u, ss, cs, vs, grad_v, leaky, eps, detach_inner, chain, threads, g_b, parts, grad_u, grad_s):
        """From grad_v = dL/dv_last (J, D, B): grad_u (I, J, D, B) = dL/du (written whole) and
        grad_s[r] = dL/ds_r (J, D, B), whose sum over (r, b) is the bias gradient.
        Scratch: g_b (R - 1, I, J, B), parts (threads, J, D, B).

        dL/du is a sum of outer products, one per use of u (as in capslab.routing.fused):
            sum_r c_r[i, j] g_s_r[j, :] + sum_{r>=1} g_b[r - 1][i, j] v_{r-1}[j, :]
        with g_b[r - 1] = dL/da_{r-1}, the logit gradient summed over the later iterations. A sweep per
        iteration after the first finds the g_b, and a last pass writes the sum.
        ``detach_inner``: only the last iteration's sum reaches u (the logits still carry gradient to
        the bias). ``chain``: follow the logits back at all (False: only the last sum's term)."""
        I, J, D, B = u.shape
        R = ss.shape[0]
        eps = u.dtype.type(eps)
        c0 = _uniform(J, leaky, u.dtype)
        g_v = grad_v.copy()
        grad_s[:] = 0
        first = R - 1  # the earliest iteration whose dL/ds is known
        for r in range(R - 1, -1, -1):
            g_s = grad_s[r]
            _squash_grad(ss[r], g_v, eps, g_s)
            first = r
            if r == 0 or not chain:
                break
            for t in nb.prange(threads):
                p = parts[t]
                p[:] = 0
                g_c = np.empty((J, B), u.dtype)
                dot = np.empty(B, u.dtype)
                i0, i1 = _share(I, threads, t)
                for i in range(i0, i1):
                    dot[:] = 0
                    for j in range(J):  # dL/dc_r = u . g_s
                        for b in range(B):
                            g_c[j, b] = 0
                        for d in range(D):
                            for b in range(B):
                                g_c[j, b] += u[i, j, d, b] * g_s[j, d, b]
                        for b in range(B):
                            dot[b] += cs[r - 1, i, j, b] * g_c[j, b]
                    for j in range(J):  # softmax backward (the sink's dL/dc is 0, leaky or not)
                        for b in range(B):
                            g_b[r - 1, i, j, b] = cs[r - 1, i, j, b] * (g_c[j, b] - dot[b])
                        if r < R - 1:
                            for b in range(B):
                                g_b[r - 1, i, j, b] += g_b[r, i, j, b]
                        for d in range(D):  # a_{r-1} = u . v_{r-1}
                            for b in range(B):
                                p[j, d, b] += g_b[r - 1, i, j, b] * u[i, j, d, b]
            g_v[:] = parts[0]
            for t in range(1, threads):
                g_v += parts[t]
        lo = R - 1 if detach_inner else first  # iterations whose terms reach u
        logits = chain and not detach_inner
        for t in nb.prange(threads):
            i0, i1 = _share(I, threads, t)
            for i in range(i0, i1):
                for j in range(J):
                    for d in range(D):
                        if lo == 0:
                            for b in range(B):
                                grad_u[i, j, d, b] = c0 * grad_s[0, j, d, b]
                        else:
                            for b in range(B):
                                grad_u[i, j, d, b] = 0
                        for r in range(max(lo, 1), R):
                            for b in range(B):
                                grad_u[i, j, d, b] += cs[r - 1, i, j, b] * grad_s[r, j, d, b]
                            if logits:
                                for b in range(B):
                                    grad_u[i, j, d, b] += g_b[r - 1, i, j, b] * vs[r - 1, j, d, b]


def available() -> bool:
    return nb is not None


def preferred(routing, u: Tensor, diagnostics: bool) -> bool:
    """True when ``routing``'s loop on votes computed from ``u`` will run here (on votes stored
    (I, J, D, B), see capslab.layers.class_caps)."""
    return (
        nb is not None
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


def _threads() -> int:
    n = max(1, min(torch.get_num_threads(), nb.config.NUMBA_NUM_THREADS))
    nb.set_num_threads(n)
    return n


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
        threads = _threads()
        ss = u.new_empty(iterations, J, D, B)
        vs = u.new_empty(iterations, J, D, B)
        cs = scratch("capslab.routing.kernel.couplings", (max(iterations - 1, 1) if backward else 1, I, J, B), u)
        lg = scratch("capslab.routing.kernel.logits", (I, J, B), u)
        parts = u.new_empty(threads, J, D, B)
        _forward(_np(store), _np(bias_t), iterations, leaky, eps, u.dtype == torch.float32, threads,
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
        threads = _threads()
        grad_store = scratch("capslab.routing.kernel.grad_votes", store.shape, u)  # (I, J, D, B)
        g_b = scratch("capslab.routing.kernel.logit_grads", (max(R - 1, 1), store.shape[0], J, B), u)
        parts = u.new_empty(threads, J, D, B)
        grad_s = torch.empty_like(ss)
        chain = not ctx.detach_inner or want_bias
        _backward(_np(store), _np(ss), _np(cs), _np(vs), _np(grad_v.to(u.dtype).permute(1, 2, 0).contiguous()),
                  ctx.leaky, ctx.eps, ctx.detach_inner, chain, threads, _np(g_b), _np(parts), _np(grad_store),
                  _np(grad_s))
        grad_u = grad_store.permute(3, 0, 1, 2) if want_u else None
        grad_bias = grad_s.sum((0, 3)) if want_bias else None
        return grad_u, grad_bias, None, None, None, None, None
