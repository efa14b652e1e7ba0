"""capslab.VoteMoments: the contractions EM and variational Bayes routing see their votes through, on each
path (compiled loops, batched products) against the formulas as they read, forward and gradients."""

import pytest
import torch

import capslab
from capslab.routing import backends, kernel
from capslab.routing.backends import Backend

B, J, I, D = 3, 4, 7, 5
PATHS = {"auto": Backend.KERNEL if kernel.available() else Backend.FUSED, "fused": Backend.FUSED}


def inputs(dtype=torch.float64, offset=3.0, seed=0):
    """Votes far from zero (a large common offset, where an uncentred expansion would cancel), weights,
    centres and per-dimension weights."""
    g = torch.Generator().manual_seed(seed)
    V = (torch.randn(B, J, I, D, generator=g, dtype=dtype) * 0.2 + offset).requires_grad_()
    w = torch.rand(B, J, I, generator=g, dtype=dtype).requires_grad_()
    m = (torch.randn(B, J, D, generator=g, dtype=dtype) * 0.2 + offset).requires_grad_()
    q = (torch.rand(B, J, D, generator=g, dtype=dtype) + 0.5).requires_grad_()
    o = torch.randn(B, J, generator=g, dtype=dtype).requires_grad_()
    return V, w, m, q, o


def everything(moments: capslab.VoteMoments, w, m, q, o):
    """Every quantity a routing takes from the votes, as one tuple."""
    weighted = moments.weigh(w)
    scale = moments.scale if isinstance(moments.scale, torch.Tensor) else torch.ones(())
    return (
        weighted.total,
        weighted.sum,
        weighted.scatter(m),
        moments.sq_distance(m, q),
        moments.sq_distance(m, q, o),
        scale,
    )


def direct(V, w, m, q, o, scale):
    """The same quantities written out on the (scaled) votes."""
    s = V.square().mean((1, 2, 3), keepdim=True).add(1e-12).sqrt() if scale == "rms" else torch.ones(())
    U = V / s
    weighted_sum = torch.einsum("bji,bjid->bjd", w, U)
    scatter = torch.einsum("bji,bjid->bjd", w, (U - m.unsqueeze(2)).square())
    sq = torch.einsum("bjd,bjid->bji", q, (U - m.unsqueeze(2)).square())
    return w.sum(-1), weighted_sum, scatter, sq, sq + o.unsqueeze(-1), s


@pytest.mark.parametrize("scale", ["raw", "rms"])
@pytest.mark.parametrize("setting", sorted(PATHS) + ["reference"])
def test_each_path_computes_the_formulas_and_their_gradients(setting, scale):
    V, w, m, q, o = inputs()
    with backends.use(setting):
        moments = capslab.VoteMoments(V, scale)
        got = everything(moments, w, m, q, o)
    assert moments.path is PATHS.get(setting, Backend.REFERENCE)
    want = direct(V, w, m, q, o, scale)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.expand_as(a))
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in want]
    loss = sum((t * c).sum() for t, c in zip(got, weights))
    loss_ref = sum((t.expand_as(c) * c).sum() for t, c in zip(want, weights))
    wrt = (V, w, m, q, o)
    for a, b in zip(torch.autograd.grad(loss, wrt), torch.autograd.grad(loss_ref, wrt)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("setting", sorted(PATHS))
def test_float32_stays_close_to_float64_far_from_zero(setting):
    """Centring: votes at offset 100 with spread 0.2 keep float32's scatter within a relative 1e-4."""
    V, w, m, _, o = inputs(torch.float64, offset=100.0)
    want = direct(V, w, m, m, o, "raw")[2]
    with backends.use(setting):
        got = capslab.VoteMoments(V.float()).weigh(w.float()).scatter(m.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("setting", sorted(PATHS))
def test_gradcheck(setting):
    V, w, m, q, o = inputs(offset=0.5)

    def f(V, w, m, q, o):
        with backends.use(setting):
            return everything(capslab.VoteMoments(V, "rms"), w, m, q, o)

    assert torch.autograd.gradcheck(f, (V, w, m, q, o))


def loss_of(V, w, m, q, o):
    return sum(t.sum() for t in everything(capslab.VoteMoments(V, "rms"), w, m, q, o))


@pytest.mark.parametrize("setting", sorted(PATHS))
def test_the_votes_gradient_is_assembled_once_per_backward(setting):
    """A graph kept for a second backward gives the same gradient again (the pieces do not pile up), and a
    backward that stopped short of the votes (a gradient of the weights alone) leaves nothing behind."""
    V, w, m, q, o = inputs()
    with backends.use(setting):
        want = torch.autograd.grad(loss_of(V, w, m, q, o), V)[0].clone()
        loss = loss_of(V, w, m, q, o)
        torch.autograd.grad(loss, w, retain_graph=True)
        first = torch.autograd.grad(loss, V, retain_graph=True)[0].clone()
        second = torch.autograd.grad(loss, V)[0]
    torch.testing.assert_close(first, want, rtol=0, atol=0)
    torch.testing.assert_close(second, want, rtol=0, atol=0)


@pytest.mark.parametrize("setting", sorted(PATHS))
def test_a_gradient_handed_back_survives_the_next_backward(setting):
    """The compiled path writes the votes' gradient into a pooled buffer: one the caller still holds is not
    reused."""
    V, w, m, q, o = inputs()
    with backends.use(setting):
        first = torch.autograd.grad(loss_of(V, w, m, q, o), V)[0]
        kept = first.clone()
        second = torch.autograd.grad(loss_of(V, w * 2, m, q, o), V)[0]
    assert torch.equal(first, kept)
    assert not torch.allclose(second, kept)


def test_without_gradients_nothing_is_tracked():
    V, w, m, q, o = inputs()
    with torch.no_grad():
        out = everything(capslab.VoteMoments(V, "rms"), w, m, q, o)
    assert all(not t.requires_grad for t in out)


@pytest.mark.parametrize("name", ["em", "variational_bayes"])
def test_training_step_of_the_gaussian_routings_is_as_exact_as_the_reference(name):
    """A CapsNet-shaped class layer (votes stored as ClassCapsules stores them) in float32: the fast path's
    poses, activations and gradients are as close to the float64 reference as the float32 reference is.
    Variational Bayes without its pose BatchNorm: over 8 examples whose poses differ by ~1e-3 it magnifies
    float32 rounding ~1000x on every path alike (the error then tells the draw, not the path)."""
    torch.manual_seed(0)
    params = {"pose_norm": False} if name == "variational_bayes" else {}
    routing = capslab.build_routing({"name": name, **params}, capslab.RoutingSpec(64, 10, 16, 8))
    x64 = torch.randn(8, 64, 8, dtype=torch.float64) * 0.1
    W64 = torch.randn(10, 64, 8, 16, dtype=torch.float64) * 0.05
    a64 = torch.rand(8, 64, dtype=torch.float64)

    def run(setting, dtype):
        x, W, acts = (t.to(dtype).requires_grad_() for t in (x64, W64, a64))
        r = routing.to(dtype)
        with backends.use(setting):
            out = r(capslab.compute_votes(x, W, backends.votes_layout(r, x)), acts, x)
            loss = out.poses.square().sum() + (out.activations * torch.arange(10.0, dtype=dtype)).sum()
            return [t.double() for t in (out.poses, out.activations, *torch.autograd.grad(loss, (x, W, acts)))]

    exact = run("reference", torch.float64)
    ref32, fast32 = run("reference", torch.float32), run("auto", torch.float32)
    for what, e, r, f in zip(("poses", "activations", "dx", "dW", "dacts"), exact, ref32, fast32):
        ref_err, fast_err = (r - e).abs().max().item(), (f - e).abs().max().item()
        assert fast_err <= 4 * ref_err + 1e-6 * e.abs().max().item(), (what, fast_err, ref_err)


def test_under_bf16_autocast_the_moments_stay_in_float32():
    """Votes in bf16 (autocast): the contractions run in float32, so EM's poses and gradients stay at least
    as close to the float32 result as the reference path's bf16 products do."""
    torch.manual_seed(0)
    layer = capslab.ClassCapsules(64, 8, 10, 16, capslab.build_routing("em", capslab.RoutingSpec(64, 10, 16, 8)))
    x, acts = torch.randn(8, 64, 8) * 0.1, torch.rand(8, 64)

    def run(setting, bf16):
        with backends.use(setting), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(x, acts)
            (grad,) = torch.autograd.grad(out.poses.float().sum() + out.activations.float().sum(), layer.weight)
        return out.poses.float().detach(), grad

    exact = run("reference", False)
    ref_err = [(a - b).abs().max() for a, b in zip(run("reference", True), exact)]
    fast_err = [(a - b).abs().max() for a, b in zip(run("auto", True), exact)]
    assert all(f <= 1.2 * r for f, r in zip(fast_err, ref_err)), (fast_err, ref_err)
