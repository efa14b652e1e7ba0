"""The compiled loops of capslab.routing.moments (numba), imported on first use; see that module.

Votes V (B, J, I, D) contiguous, per-example factors inv_s (B,), centres c (B, J, D); every loop runs
over (b, j) pairs in parallel and streams that pair's (I, D) block once, D innermost (the vector
lanes). x = V inv_s - c throughout.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from capslab.routing.kernel_loops import _jit


@_jit(parallel=True)
def sums(V, inv_s, c, w, out):
    """out (B, J, 2D) = [sum_i w x, sum_i w x^2] for weights w (B, J, I)."""
    B, J, I, D = V.shape
    for bj in nb.prange(B * J):
        b, j = bj // J, bj % J
        s1 = np.zeros(D, V.dtype)
        s2 = np.zeros(D, V.dtype)
        f, cc = inv_s[b], c[b, j]
        for i in range(I):
            wi = w[b, j, i]
            v = V[b, j, i]
            for d in range(D):
                x = v[d] * f - cc[d]
                s1[d] += wi * x
                s2[d] += wi * x * x
        out[b, j, :D] = s1
        out[b, j, D:] = s2


@_jit(parallel=True)
def forms(V, inv_s, c, ab, offset, out):
    """out (B, J, I) = offset + sum_d a_d x_d + b_d x_d^2 for ab = [a, b] (B, J, 2D), offset (B, J)."""
    B, J, I, D = V.shape
    for bj in nb.prange(B * J):
        b, j = bj // J, bj % J
        f, cc = inv_s[b], c[b, j]
        a = ab[b, j, :D]
        q = ab[b, j, D:]
        o = offset[b, j]
        for i in range(I):
            v = V[b, j, i]
            acc = o
            for d in range(D):
                x = v[d] * f - cc[d]
                acc += x * (a[d] + q[d] * x)
            out[b, j, i] = acc


@_jit(parallel=True)
def assemble(V, inv_s, c, S, C, k, out):
    """out (B, J, I, D) = g inv_s + k V, the votes' gradient from K pieces, weights S (K, B, J, I) and
    coefficients C = [a, b] (K, B, J, 2D): g = sum_k S_k (a_k + 2 b_k x) is the gradient of the scaled
    votes V inv_s, and k (B,) the share of the scale's gradient."""
    B, J, I, D = V.shape
    K = S.shape[0]
    for bj in nb.prange(B * J):
        b, j = bj // J, bj % J
        f, kb, cc = inv_s[b], k[b], c[b, j]
        ga = np.empty(D, V.dtype)
        gb = np.empty(D, V.dtype)
        for i in range(I):
            ga[:] = 0
            gb[:] = 0
            for n in range(K):
                s = S[n, b, j, i]
                for d in range(D):
                    ga[d] += s * C[n, b, j, d]
                    gb[d] += s * C[n, b, j, D + d]
            v = V[b, j, i]
            o = out[b, j, i]
            for d in range(D):
                o[d] = (ga[d] + 2 * gb[d] * (v[d] * f - cc[d])) * f + kb * v[d]
