"""Weighted moments of votes: the two contractions that Gaussian-mixture routings (EM, variational Bayes)
are made of, with one pass over the votes each.

Such a routing sees the votes V (B, J, I, D) only through

- per-output weighted sums over the inputs (M-step): sum_i w_ji V_ji and sum_i w_ji (V_ji - m_j)^2;
- per-vote weighted squared distances (E-step): sum_d q_jd (V_jid - m_jd)^2.

Written as they read (the reference path), every iteration builds (B, J, I, D) temporaries such as
(V - m)^2, and autograd keeps them for the backward: 94 MB each for CapsNet's class capsules at batch
128, so the routing is bound by memory traffic. Expanded around a fixed centre c_j (the mean of the
votes over i, without gradient: the results do not depend on it, and centring keeps the expansion
free of cancellation), both become contractions of x = V - c and x^2 with small tensors:

    sum_i w (V - m)^2 = sum_i w x^2 - 2 e sum_i w x + e^2 sum_i w          e = m - c
    sum_d q (V - m)^2 = sum_d q x^2 - 2 sum_d q e x + sum_d q e^2

Each contraction reads the votes once. Their gradient with respect to the votes is a sum of rank-one
pieces s_ji (a_j + 2 b_j x_ji), one per contraction, so it is deferred: each contraction's backward
computes the gradient of its small input and leaves its piece, and the votes' own autograd node (which
autograd runs after all of their consumers) adds the pieces up in one pass. The contractions run as
compiled loops (numba, CPU) or as batched products; capslab.routing.backends chooses
(:func:`capslab.routing.backends.moments_path`), and ``routing_backend: reference`` runs the formulas as
they read.

A routing whose constants are absolute routes on votes of unit RMS (``scale="rms"``,
capslab.routing.scale); the division by each example's RMS is folded into the contractions and its
gradient into the same final pass, so no normalised copy of the votes exists either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from capslab.buffers import scratch
from capslab.routing import backends
from capslab.routing.backends import Backend
from capslab.routing.scale import RMS_EPS, VoteScale, normalize_votes


class VoteMoments:
    """The votes V (B, J, I, D) of a Gaussian-mixture routing (``votes.transpose(1, 2)``), seen through
    the contractions :meth:`weigh` and :meth:`sq_distance`; with ``scale="rms"``, the votes divided by
    each example's RMS, which is :attr:`scale` ((B, 1, 1, 1); 1.0 with ``"raw"``)."""

    def __init__(self, V: Tensor, scale: VoteScale = "raw"):
        self.shape = V.shape
        self.path = backends.moments_path(V)
        self._state: _State | None = None
        self._token: Tensor | None = None
        if self.path is Backend.REFERENCE:
            self.V, self.scale = normalize_votes(V, scale, RMS_EPS)
            return
        B = V.shape[0]
        with torch.no_grad(), _full_precision(V):
            s = rms(V.to(_wide(V.dtype))) if scale == "rms" else None  # (B,)
            inv_s = s.reciprocal() if s is not None else V.new_ones(B, dtype=_wide(V.dtype))
            c = V.to(_wide(V.dtype)).mean(2) * inv_s.view(B, 1, 1)  # (B, J, D)
        impl = _Compiled if self.path is Backend.KERNEL else _Operators
        track = torch.is_grad_enabled() and V.requires_grad
        self._state = _State(V.detach(), inv_s, c, impl, track, s)
        if track:
            self._token, s_out = _Source.apply(V, self._state)
            s = s_out if s is not None else None
        self.scale = s.view(B, 1, 1, 1) if s is not None else 1.0

    def weigh(self, w: Tensor) -> Weighted:
        """The moments of the votes under per-(output, input) weights w (B, J, I)."""
        st = self._state
        total = w.sum(-1)  # (B, J)
        if st is None:  # reference: as the equations read
            V = self.V
            wsum = (w.unsqueeze(2) @ V).squeeze(2)  # (B, J, 1, I) @ (B, J, I, D) -> (B, J, D)
            return Weighted(total, wsum, lambda m: (w.unsqueeze(2) @ (V - m.unsqueeze(2)).square()).squeeze(2))
        T1, T2 = _Sums.apply(self._token, w, st).chunk(2, -1)  # (B, J, D) each: sum_i w x, sum_i w x^2
        total_ = total.unsqueeze(-1)

        def scatter(m: Tensor) -> Tensor:
            e = m - st.c
            return T2 - 2 * e * T1 + e.square() * total_

        return Weighted(total, T1 + st.c * total_, scatter)

    def sq_distance(self, centre: Tensor, weight: Tensor, offset: Tensor | None = None) -> Tensor:
        """(B, J, I): offset_j + sum_d weight_jd (V_jid - centre_jd)^2, for centre and weight (B, J, D) and
        offset (B, J) (a log density's normalising terms; none: 0)."""
        st = self._state
        if st is None:
            out = ((self.V - centre.unsqueeze(2)).square() @ weight.unsqueeze(-1)).squeeze(-1)
            return out if offset is None else out + offset.unsqueeze(-1)
        e = centre - st.c
        ab = torch.cat([-2 * weight * e, weight], -1)  # (B, J, 2D)
        const = (weight * e.square()).sum(-1)  # (B, J)
        return _Forms.apply(self._token, ab, const if offset is None else const + offset, st)


def rms(V: Tensor) -> Tensor:
    """(B,): the RMS of each example's votes, as normalize_votes takes it, without a squared copy of them."""
    n = V[0].numel()
    return (torch.linalg.vector_norm(V.flatten(1), dim=1).square() / n + RMS_EPS).sqrt()


@dataclass
class Weighted:
    """Moments of the votes under weights w (B, J, I): ``total`` = sum_i w (B, J), ``sum`` = sum_i w V
    (B, J, D), and :meth:`scatter`."""

    total: Tensor
    sum: Tensor
    _scatter: Callable[[Tensor], Tensor] = field(repr=False)

    def scatter(self, about: Tensor) -> Tensor:
        """sum_i w_ji (V_ji - about_j)^2 (B, J, D), about (B, J, D)."""
        return self._scatter(about)


@dataclass
class _State:
    V: Tensor  # (B, J, I, D) as given, detached
    inv_s: Tensor  # (B,) 1 / RMS, or ones
    c: Tensor  # (B, J, D) centres of the scaled votes
    impl: type
    track: bool  # the votes want a gradient: the contractions leave their pieces
    s: Tensor | None  # (B,) RMS ("rms") or None
    # per contraction and backward: (the backward's id, s (B, J, I), [a, b] (B, J, 2D), [sum_i s x, sum_i s x^2]
    # (B, J, 2D)); its share of the scaled votes' gradient is s (a + 2 b x)
    pieces: list = field(default_factory=list)


class _Source(torch.autograd.Function):
    """votes -> (a scalar token every contraction takes, so that the votes' gradient is assembled after
    them; the RMS s (B,), or an empty tensor)."""

    @staticmethod
    def forward(ctx, V, state):
        ctx.state = state
        return V.new_zeros(()), state.s.clone() if state.s is not None else V.new_empty(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, _, g_s):
        st = ctx.state
        B, J, I, D = st.V.shape
        if not st.pieces and st.s is None:
            return None, None
        task = _graph_task()  # this backward's pieces only: a backward that did not reach the votes left its own
        pieces = [p[1:] for p in st.pieces if p[0] == task]
        st.pieces.clear()
        like = st.c  # the dtype of the moments
        S = torch.stack([p[0] for p in pieces]).to(like.dtype) if pieces else like.new_zeros(0, B, J, I)
        C = torch.stack([p[1] for p in pieces]).to(like.dtype) if pieces else like.new_zeros(0, B, J, 2 * D)
        k = like.new_zeros(B)
        if st.s is not None:  # V / s with s = sqrt(|V|^2 / N + eps): dL/ds = g_s - sum g V / s^2, ds/dV = V / (N s)
            k = (g_s - _dots(st.c, st.inv_s, pieces) * st.inv_s.square()) * st.inv_s / (J * I * D)
        return st.impl.grad(st.V, st.inv_s, st.c, S, C, k), None


def _dots(c: Tensor, inv_s: Tensor, pieces: list) -> Tensor:
    """(B,): sum_{j, i, d} g V, g the scaled votes' gradient sum_k s_k (a_k + 2 b_k x), from each piece's
    moments [sum_i s x, sum_i s x^2]: with V = (x + c) s, no pass over the votes."""
    total = c.new_zeros(c.shape[0])
    for s, ab, m in pieces:
        (a, b), (m1, m2) = ab.chunk(2, -1), m.chunk(2, -1)  # (B, J, D) each
        per = a * c * s.sum(-1, keepdim=True) + a * m1 + 2 * b * c * m1 + 2 * b * m2
        total = total + per.sum((1, 2))
    return total / inv_s


def _graph_task():
    """The running backward's id (torch's graph task), or None on a torch without it."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task() if task is not None else None


class _Sums(torch.autograd.Function):
    """(token, w (B, J, I)) -> [sum_i w x, sum_i w x^2] (B, J, 2D)."""

    @staticmethod
    def forward(ctx, token, w, state):
        ctx.state = state
        out = state.impl.sums(state.V, state.inv_s, state.c, w)
        ctx.save_for_backward(w, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        st, (w, out) = ctx.state, ctx.saved_tensors
        if st.track:
            st.pieces.append((_graph_task(), w, g, out))
        grad_w = st.impl.forms(st.V, st.inv_s, st.c, g, None) if ctx.needs_input_grad[1] else None
        return _token_grad(ctx, g), grad_w, None


class _Forms(torch.autograd.Function):
    """(token, [a, b] (B, J, 2D), offset (B, J)) -> offset + sum_d a x + b x^2 (B, J, I)."""

    @staticmethod
    def forward(ctx, token, ab, offset, state):
        ctx.state = state
        ctx.save_for_backward(ab)
        return state.impl.forms(state.V, state.inv_s, state.c, ab, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        st, (ab,) = ctx.state, ctx.saved_tensors
        grad_ab = st.impl.sums(st.V, st.inv_s, st.c, g)  # also this piece's moments
        if st.track:
            st.pieces.append((_graph_task(), g, ab, grad_ab))
        grad_offset = g.sum(-1) if ctx.needs_input_grad[2] else None
        return _token_grad(ctx, g), grad_ab if ctx.needs_input_grad[1] else None, grad_offset, None


def _token_grad(ctx, like: Tensor) -> Tensor | None:
    return like.new_zeros(()) if ctx.needs_input_grad[0] else None


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype the moments are computed in: float32 at least (half-precision votes under autocast lose
    the centred expansion's digits)."""
    return torch.promote_types(dtype, torch.float32)


def _full_precision(V: Tensor):
    """Autocast off (the operators below pick their dtype themselves)."""
    return torch.autocast(V.device.type, enabled=False)


class _Operators:
    """The contractions as batched products (any device and dtype; half-precision votes in float32)."""

    @staticmethod
    def _x(V, inv_s, c):
        return V.to(c.dtype) * inv_s.view(-1, 1, 1, 1) - c.unsqueeze(2)  # (B, J, I, D)

    @staticmethod
    def sums(V, inv_s, c, w):
        with _full_precision(V):
            x = _Operators._x(V, inv_s, c)
            w = w.to(x.dtype).unsqueeze(2)  # (B, J, 1, I)
            return torch.cat([w @ x, w @ x.square()], -1).squeeze(2)

    @staticmethod
    def forms(V, inv_s, c, ab, offset):
        with _full_precision(V):
            x = _Operators._x(V, inv_s, c)
            a, b = ab.to(x.dtype).unsqueeze(-1).chunk(2, 2)  # (B, J, D, 1) each
            out = (x @ a + x.square() @ b).squeeze(-1)
            return out if offset is None else out + offset.to(x.dtype).unsqueeze(-1)

    @staticmethod
    def grad(V, inv_s, c, S, C, k):
        with _full_precision(V):
            S, C = S.to(c.dtype), C.to(c.dtype)
            G = S.permute(1, 2, 3, 0) @ C.permute(1, 2, 0, 3)  # (B, J, I, K) @ (B, J, K, 2D)
            ga, gb = G.chunk(2, -1)
            g = ga + 2 * gb * _Operators._x(V, inv_s, c)  # the gradient of the scaled votes
            return (g * inv_s.view(-1, 1, 1, 1) + k.view(-1, 1, 1, 1) * V.to(c.dtype)).to(V.dtype)


class _Compiled:
    """The contractions as compiled loops (capslab.routing.moments_loops) on contiguous CPU votes."""

    @staticmethod
    def _run(name, *args):
        getattr(_loops(), name)(*(t.detach().contiguous().numpy() for t in args))

    @staticmethod
    def sums(V, inv_s, c, w):
        B, J, _, D = V.shape
        out = V.new_empty(B, J, 2 * D)
        _Compiled._run("sums", V, inv_s, c, w.to(V.dtype), out)
        return out

    @staticmethod
    def forms(V, inv_s, c, ab, offset):
        out = V.new_empty(V.shape[:3])
        offset = offset.to(V.dtype) if offset is not None else V.new_zeros(V.shape[:2])
        _Compiled._run("forms", V, inv_s, c, ab.to(V.dtype), offset, out)
        return out

    @staticmethod
    def grad(V, inv_s, c, S, C, k):
        out = scratch("capslab.routing.moments.grad_votes", tuple(V.shape), V)  # (B, J, I, D)
        _Compiled._run("assemble", V, inv_s, c, S, C, k, out)
        return out


def _loops():
    """capslab.routing.moments_loops, on torch's thread count (numba's pool sized first: kernel.loops)."""
    from capslab.routing import kernel

    kernel.loops().set_threads(torch.get_num_threads())
    from capslab.routing import moments_loops

    return moments_loops
