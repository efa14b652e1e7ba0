"""The compiled loops of capslab.routing.kernel (numba), imported on first use; see that module.

Arrays are numpy views of the tensors capslab.routing.kernel allocates; float32 or float64. The entry
points take named bundles (numba compiles namedtuples of arrays and scalars as plain structs):
:class:`Votes` (where the votes come from), :class:`Loop` (the routing's constants), :class:`Saved` (what
the forward keeps for the backward), and the scratch or gradient arrays of each direction.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba as nb
import numpy as np

# Reassociation lets the compiler vectorise the sums; no finite-math assumptions (NaN stays NaN).
_FAST = {"reassoc", "contract", "nsz", "arcp"}


# The votes: ``stored`` (I, J, D, B) when given, else computed per input from ``wt`` (I, J*D, K), the
# transformation matrices, and ``ut`` (I, K, B), the input poses; ``from_weights`` says which (the unused
# arrays are empty).
Votes = namedtuple("Votes", "stored wt ut from_weights")
# iterations r; coupling: SOFTMAX, LEAKY (softmax over [0 | b]) or MAX_MIN (lb + (ub - lb) (b - min) / (max -
# min)) with its lb, ub; eps of the squash; fast: the polynomial exp (float32); threads
Loop = namedtuple("Loop", "iterations coupling lb ub eps fast threads")
SOFTMAX, LEAKY, MAX_MIN = 0, 1, 2
# ss[r] = s_r (J, D, B) (bias included), vs[r] = v_r, cs[r - 1] = c_r (I, J, B) for r >= 1; spans[r - 1]
# (I, B) = max_j b - min_j b of the logits behind c_r (MAX_MIN; its backward needs them)
Saved = namedtuple("Saved", "ss cs vs spans")
# forward scratch: lg (I, J, B) logits, parts (threads, J, D, B) per-thread partial sums
ForwardScratch = namedtuple("ForwardScratch", "lg parts")
# backward scratch: g_b (R - 1, I, J, B) logit gradients, parts (threads, J, D, B)
BackwardScratch = namedtuple("BackwardScratch", "g_b parts")
# backward outputs: grad_votes (I, J, D, B) (stored votes), or grad_wt (I, J*D, K) and grad_ut (I, B, K)
# (from the weights); grad_s (R, J, D, B), summed over (r, b) for the bias
Grads = namedtuple("Grads", "grad_votes grad_wt grad_ut grad_s")


def _jit(**kw):
    return nb.njit(fastmath=_FAST, error_model="numpy", cache=True, nogil=True, **kw)


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
def exp_nonpositive(x, bits, fast):
    """x (J, L) <- exp(x) for x <= 0. ``fast`` (float32): a polynomial that vectorises, within 2e-7
    relative of exp, faster than libm's (docs/performance.md); arguments below -87 give 2^-126 (float32's
    least normal)."""
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
            p = t_(1) + r * (
                t_(1) + r * (t_(0.5) + r * (t_(1 / 6) + r * (t_(1 / 24) + r * (t_(1 / 120) + r * t_(1 / 720)))))
            )
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
    exp_nonpositive(c, bits, fast)
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
def _max_min(lg, lb, ub, c, span):
    """c (J, L) = lb + (ub - lb) (lg - min_j lg) / (max_j lg - min_j lg), 1/J where every logit of a lane is
    equal; span (L,) <- max - min (0 there)."""
    J, L = lg.shape
    dt = lg.dtype.type
    k = dt(ub - lb)
    for lane in range(L):
        lo = lg[0, lane]
        hi = lg[0, lane]
        for j in range(1, J):
            lo = min(lo, lg[j, lane])
            hi = max(hi, lg[j, lane])
        span[lane] = hi - lo
        if hi == lo:
            for j in range(J):
                c[j, lane] = dt(1.0) / J
        else:
            for j in range(J):
                c[j, lane] = dt(lb) + k * ((lg[j, lane] - lo) / span[lane])


@_jit()
def _couple(lg, loop, top, bits, c, span):
    """c (J, L) = the coupling of the logits lg (J, L) (loop.coupling); span: see :func:`_max_min`."""
    if loop.coupling == MAX_MIN:
        _max_min(lg, loop.lb, loop.ub, c, span)
    else:
        _softmax(lg, loop.coupling == LEAKY, loop.fast, top, bits, c)


@_jit()
def _couple_grad(loop, c, span, g_c, top, g_b):
    """g_b (J, L) = dL/d(logits) from g_c = dL/dc (J, L), c the coupling (J, L) and span (L,) its logits' max
    - min (MAX_MIN). Softmax (the sink's dL/dc is 0, leaky or not): c (g_c - sum_j c g_c). Max-min, with
    t_j = (c_j - lb) / (ub - lb) and f = (ub - lb) / span: f g_c_j, plus f sum_j g_c (t - 1) shared by the
    minima and -f sum_j g_c t by the maxima (as torch's amin / amax backward share among ties); 0 where
    every logit was equal."""
    J, L = c.shape
    dt = c.dtype.type
    if loop.coupling != MAX_MIN:
        top[:] = 0
        for j in range(J):
            for lane in range(L):
                top[lane] += c[j, lane] * g_c[j, lane]
        for j in range(J):
            for lane in range(L):
                g_b[j, lane] = c[j, lane] * (g_c[j, lane] - top[lane])
        return
    lb, k = dt(loop.lb), dt(loop.ub - loop.lb)
    for lane in range(L):
        if span[lane] == 0:
            for j in range(J):
                g_b[j, lane] = 0
            continue
        # the minima and maxima of the logits are those of c (a monotone map of them): found by comparison,
        # not by an exact value of c, which fast-math rounding need not give
        c_lo = c[0, lane]
        c_hi = c[0, lane]
        for j in range(1, J):
            c_lo = min(c_lo, c[j, lane])
            c_hi = max(c_hi, c[j, lane])
        f = k / span[lane]
        g_lo = dt(0)
        g_hi = dt(0)
        n_lo = 0
        n_hi = 0
        for j in range(J):
            t = (c[j, lane] - lb) / k
            g_lo += g_c[j, lane] * (t - 1)
            g_hi -= g_c[j, lane] * t
            n_lo += c[j, lane] == c_lo
            n_hi += c[j, lane] == c_hi
        for j in range(J):
            g = f * g_c[j, lane]
            if c[j, lane] == c_lo:
                g += f * g_lo / n_lo
            if c[j, lane] == c_hi:
                g += f * g_hi / n_hi
            g_b[j, lane] = g


@_jit()
def _add_parts(parts, out):
    """out (J, D, B) = the sum of the threads' partial sums parts (T, J, D, B). Written as loops: an
    array-to-array assignment in numba compiles its shape-mismatch error formatting, seconds of every
    fresh compile."""
    T, J, D, B = parts.shape
    for j in range(J):
        for d in range(D):
            for b in range(B):
                out[j, d, b] = parts[0, j, d, b]
            for t in range(1, T):
                for b in range(B):
                    out[j, d, b] += parts[t, j, d, b]


@_jit()
def _share(n, threads, t):
    """Thread t's range of n inputs."""
    return t * n // threads, (t + 1) * n // threads


@_jit()
def _votes(votes, i, buf):
    """Input i's votes (J, D, B): a view of the stored votes, or computed into buf from W_i and u_i."""
    if not votes.from_weights:
        return votes.stored[i]
    wt, ut = votes.wt, votes.ut
    J, D, B = buf.shape
    K = ut.shape[1]
    for j in range(J):
        for d in range(D):
            n = j * D + d
            k = 0
            while k < K:  # four terms per pass over the row: a quarter of the loads and stores of buf
                if k + 4 <= K:
                    w0, w1, w2, w3 = wt[i, n, k], wt[i, n, k + 1], wt[i, n, k + 2], wt[i, n, k + 3]
                    if k == 0:
                        for b in range(B):
                            buf[j, d, b] = (
                                w0 * ut[i, k, b] + w1 * ut[i, k + 1, b] + w2 * ut[i, k + 2, b] + w3 * ut[i, k + 3, b]
                            )
                    else:
                        for b in range(B):
                            buf[j, d, b] += (
                                w0 * ut[i, k, b] + w1 * ut[i, k + 1, b] + w2 * ut[i, k + 2, b] + w3 * ut[i, k + 3, b]
                            )
                    k += 4
                else:
                    w0 = wt[i, n, k]
                    if k == 0:
                        for b in range(B):
                            buf[j, d, b] = w0 * ut[i, k, b]
                    else:
                        for b in range(B):
                            buf[j, d, b] += w0 * ut[i, k, b]
                    k += 1
    return buf


@_jit(parallel=True)
def forward(votes, bias, loop, saved, scratch):
    """Votes (a :class:`Votes`), bias (J, D) -> ``saved`` filled: s_r, v_r and c_r (c_0 is uniform; a
    single cs slot, when no backward follows, holds the latest c_r). From the weights, saved.ss[0] comes
    in holding sum_i W_i u_i (the first iteration's plain sum).

    Threads split the inputs; every inner loop runs over the B examples, contiguous."""
    ss, cs, vs, spans = saved.ss, saved.cs, saved.vs, saved.spans
    lg, parts = scratch.lg, scratch.parts
    leaky, threads = loop.coupling == LEAKY, loop.threads
    I, J, B = lg.shape
    D = ss.shape[2]
    dt = lg.dtype.type
    eps = dt(loop.eps)
    c0 = _uniform(J, leaky, lg.dtype)
    lg[:] = 0
    from_weights = votes.from_weights
    for r in range(loop.iterations):
        v = vs[r - 1]
        skip = r == 0 and from_weights  # ss[0] holds sum_i W_i u_i already: one matrix product (caller)
        for t in nb.prange(threads):
            p = parts[t]
            p[:] = 0
            if skip:
                if t == 0:
                    _add_parts(ss[:1], p)
                continue
            top = np.empty(B, lg.dtype)
            bits = np.empty((J, B), np.int32)
            buf = np.empty((J, D, B), lg.dtype)
            i0, i1 = _share(I, threads, t)
            for i in range(i0, i1):
                x = _votes(votes, i, buf)
                if r == 0:  # uniform coupling: a plain sum (scaled below)
                    for j in range(J):
                        for d in range(D):
                            for b in range(B):
                                p[j, d, b] += x[j, d, b]
                    continue
                for j in range(J):  # b_r = b_{r-1} + u . v_{r-1}
                    for d in range(D):
                        for b in range(B):
                            lg[i, j, b] += x[j, d, b] * v[j, d, b]
                slot = (r - 1) % cs.shape[0]
                c = cs[slot, i]
                _couple(lg[i], loop, top, bits, c, spans[slot, i])
                for j in range(J):  # this input's share of s_r
                    for d in range(D):
                        for b in range(B):
                            p[j, d, b] += c[j, b] * x[j, d, b]
        out = ss[r]
        _add_parts(parts[:threads], out)
        scale = c0 if r == 0 else dt(1)
        for j in range(J):
            for d in range(D):
                for b in range(B):
                    out[j, d, b] = out[j, d, b] * scale + bias[j, d]
        _squash(out, eps, vs[r])


@_jit(parallel=True)
def backward(votes, saved, grad_v, loop, detach_inner, chain, scratch, grads):
    """From grad_v = dL/dv_last (J, D, B): dL/d(votes), written whole into grads.grad_votes; or, when
    the votes came from the weights, straight into grads.grad_wt and grads.grad_ut without writing it
    out. grads.grad_s[r] = dL/ds_r (J, D, B), whose sum over (r, b) is the bias gradient.

    dL/du is a sum of outer products, one per use of u (as in capslab.routing.fused):
        sum_r c_r[i, j] g_s_r[j, :] + sum_{r>=1} g_b[r - 1][i, j] v_{r-1}[j, :]
    with g_b[r - 1] = dL/da_{r-1}, the logit gradient summed over the later iterations. A sweep per
    iteration after the first finds the g_b, and a last pass forms the sum.
    ``detach_inner``: only the last iteration's sum reaches u (the logits still carry gradient to
    the bias). ``chain``: follow the logits back at all (False: only the last sum's term)."""
    ss, cs, vs, spans = saved.ss, saved.cs, saved.vs, saved.spans
    g_b, parts = scratch.g_b, scratch.parts
    grad_u, grad_wt, grad_ut, grad_s = grads.grad_votes, grads.grad_wt, grads.grad_ut, grads.grad_s
    wt, ut = votes.wt, votes.ut
    leaky, threads = loop.coupling == LEAKY, loop.threads
    I, J, B = g_b.shape[1:]
    D = ss.shape[2]
    R = ss.shape[0]
    dt = ss.dtype.type
    eps = dt(loop.eps)
    c0 = _uniform(J, leaky, ss.dtype)
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
            g_c = np.empty((J, B), ss.dtype)
            dot = np.empty(B, ss.dtype)
            buf = np.empty((J, D, B), ss.dtype)
            i0, i1 = _share(I, threads, t)
            for i in range(i0, i1):
                x = _votes(votes, i, buf)
                for j in range(J):  # dL/dc_r = u . g_s
                    for b in range(B):
                        g_c[j, b] = 0
                    for d in range(D):
                        for b in range(B):
                            g_c[j, b] += x[j, d, b] * g_s[j, d, b]
                _couple_grad(loop, cs[r - 1, i], spans[r - 1, i], g_c, dot, g_b[r - 1, i])
                for j in range(J):
                    if r < R - 1:
                        for b in range(B):
                            g_b[r - 1, i, j, b] += g_b[r, i, j, b]
                    for d in range(D):  # a_{r-1} = u . v_{r-1}
                        for b in range(B):
                            p[j, d, b] += g_b[r - 1, i, j, b] * x[j, d, b]
        _add_parts(parts[:threads], g_v)
    lo = R - 1 if detach_inner else first  # iterations whose terms reach u
    logits = chain and not detach_inner
    from_weights = votes.from_weights
    K = ut.shape[1]
    for t in nb.prange(threads):
        buf = np.empty((J, D, B), ss.dtype)
        gk = np.empty((K, B), ss.dtype)
        i0, i1 = _share(I, threads, t)
        for i in range(i0, i1):
            gr = buf if from_weights else grad_u[i]  # dL/d(votes of input i) (J, D, B)
            for j in range(J):
                for d in range(D):
                    if lo == 0:
                        for b in range(B):
                            gr[j, d, b] = c0 * grad_s[0, j, d, b]
                    else:
                        for b in range(B):
                            gr[j, d, b] = 0
                    for r in range(max(lo, 1), R):
                        for b in range(B):
                            gr[j, d, b] += cs[r - 1, i, j, b] * grad_s[r, j, d, b]
                        if logits:
                            for b in range(B):
                                gr[j, d, b] += g_b[r - 1, i, j, b] * vs[r - 1, j, d, b]
            if not from_weights:
                continue
            gk[:] = 0  # votes_i = W_i u_i: dW_i = g ut_i^T, du_i = W_i^T g
            for j in range(J):
                for d in range(D):
                    n = j * D + d
                    for k in range(K):
                        acc = dt(0)
                        w = wt[i, n, k]
                        for b in range(B):
                            acc += gr[j, d, b] * ut[i, k, b]
                            gk[k, b] += w * gr[j, d, b]
                        grad_wt[i, n, k] = acc
            for b in range(B):
                for k in range(K):
                    grad_ut[i, b, k] = gk[k, b]


def set_threads(n: int) -> int:
    """Use n threads (at most numba's pool size); returns the number used."""
    n = max(1, min(n, nb.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    nb.set_num_threads(n)
    return n
