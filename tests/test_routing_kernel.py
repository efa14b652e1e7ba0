"""The compiled CPU kernel of dynamic routing (capslab.routing.kernel) against the plain loop: poses and
gradients in float64, float32 within float tolerance, and when it must not run."""

import pytest
import torch
from test_fast_routing import grads, inputs, plain_dynamic

import capslab
from capslab.routing import backends, kernel
from capslab.routing.backends import VotesLayout

pytestmark = pytest.mark.skipif(not kernel.available(), reason="numba is not installed")
B, I, J, D, K = 3, 20, 4, 5, 3


@pytest.fixture
def calls(monkeypatch):
    """How many times the kernel ran."""
    n = []
    route = kernel._route
    monkeypatch.setattr(kernel, "_route", lambda *a: n.append(1) or route(*a))
    return n


def layer_for(options, dtype=torch.float64, spec=None):
    spec = spec or capslab.RoutingSpec(I, J, D, K)
    routing = capslab.build_routing({"name": "dynamic", **options}, spec).to(dtype)
    layer = capslab.ClassCapsules(spec.in_caps, spec.in_pose_dim, spec.out_caps, spec.pose_dim, routing).to(dtype)
    return layer, routing


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"leaky": True},
        {"gradient": "detach_inner"},
        {"bias": False},
        {"iterations": 1},
        {"iterations": 2},
        {"iterations": 5},
        {"gradient": "detach_inner", "bias": False},
        {"leaky": True, "iterations": 4},
    ],
)
def test_kernel_matches_plain_loop(options, calls):
    layer, routing = layer_for(options)
    x, W = inputs()
    with torch.no_grad():
        layer.weight.copy_(W)
        if routing.bias is not None:
            routing.bias.normal_(0, 0.1)
    res = layer(x)
    assert calls, "the kernel did not run"
    p = routing.params
    v, *_ = plain_dynamic(x, layer.weight, routing.bias, p.iterations, p.leaky, p.gradient == "detach_inner")
    torch.testing.assert_close(res.poses, v)
    torch.testing.assert_close(res.activations, v.norm(dim=-1))
    params = [x, layer.weight] + ([routing.bias] if routing.bias is not None else [])
    for got, want in zip(grads([res.poses, res.activations], params), grads([v, v.norm(dim=-1)], params)):
        torch.testing.assert_close(got, want)


def test_kernel_gradcheck(calls):
    layer, routing = layer_for({"iterations": 3}, spec=capslab.RoutingSpec(6, 3, 4, 2))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: layer(x).poses, (x, layer.weight, routing.bias), eps=1e-6, atol=1e-6, rtol=1e-4
    )
    assert calls


@pytest.mark.parametrize("batch", [1, 16, 37])
def test_kernel_float32_matches_the_operator_path(batch, calls):
    """float32 (the polynomial exp) against the fused operator loop, at the paper's J = 10, D = 16."""
    spec = capslab.RoutingSpec(64, 10, 16, 8)
    layer, routing = layer_for({}, torch.float32, spec)
    torch.manual_seed(0)
    x = torch.randn(batch, 64, 8, requires_grad=True) * 0.3
    outs = []
    for setting in ("auto", "fused"):
        with backends.use(setting):
            res = layer(x)
        outs.append([res.poses, *grads([res.poses], [x, layer.weight, routing.bias])])
    assert len(calls) == 1
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_polynomial_exp_is_within_float32_rounding():
    x = torch.linspace(-87, 0, 10_000).reshape(100, 100)
    got = x.clone()
    kernel.loops().exp_nonpositive(got.numpy(), torch.empty(100, 100, dtype=torch.int32).numpy(), True)
    torch.testing.assert_close(got, torch.exp(x), rtol=4e-7, atol=0)


class SigmoidCoupling(capslab.AgreementRouting):
    """An agreement routing whose coupling the kernel does not have."""

    name = "sigmoid_coupling_test"
    Params = capslab.AgreementParams

    def couple(self, b):
        return b.sigmoid()


@pytest.mark.parametrize("case", ["diagnostics", "not_compiled", "own_coupling", "efficient_squash", "bf16"])
def test_kernel_does_not_run_where_it_does_not_apply(case, calls):
    spec = capslab.RoutingSpec(I, J, D, K)
    squash = capslab.build_squash("efficient") if case == "efficient_squash" else None
    routing = SigmoidCoupling(spec) if case == "own_coupling" else capslab.build_routing("dynamic", spec, squash)
    layer = capslab.ClassCapsules(I, K, J, D, routing)
    x = torch.randn(B, I, K)
    setting = "fused" if case == "not_compiled" else "auto"
    with backends.use(setting):
        assert layer(x).poses.shape == (B, J, D)
    if case == "diagnostics":
        assert layer(x, diagnostics=True).coupling.shape == (B, I, J)
        assert len(calls) == 1  # only the call without diagnostics
        return
    if case == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
        assert len(calls) == 1  # only the float32 call
        return
    assert not calls
    with backends.use(setting):
        assert backends.votes_layout(routing, x) is VotesLayout.IBJD  # the fused loop's storage


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_max_min_coupling_in_the_kernel_equals_the_plain_loop_ties_included(dtype, calls):
    """Two outputs with the same transformation matrices get the same logits: a tie at the maximum or the
    minimum of many inputs' logits, whose gradient the kernel shares among the tied outputs as torch's
    amax / amin do in the plain loop. In float32 the kernel is as close to the float64 plain loop as the
    float32 plain loop is (max-min divides by the logits' span, which magnifies rounding on every path
    alike where the span is small: a fixed tolerance fails on some draws)."""
    torch.manual_seed(0)
    spec = capslab.RoutingSpec(I, J, D, K)
    # parameters and inputs drawn in dtype, so the float64 run below sees exactly the float32 runs' numbers
    routing = capslab.build_routing({"name": "max_min", "lb": 0.1, "ub": 0.9}, spec).to(dtype)
    layer = capslab.ClassCapsules(I, K, J, D, routing).to(dtype)
    with torch.no_grad():
        layer.weight[1].copy_(layer.weight[0])  # outputs 0 and 1 tie
    x64 = torch.randn(B, I, K, dtype=dtype).double()

    def run(setting, dt):
        x = x64.to(dt).requires_grad_()
        net = layer.to(dt)
        with backends.use(setting):
            out = net(x)
            return [t.double() for t in (out.poses, *grads([out.poses, out.activations], [x, *net.parameters()]))]

    ref, got = run("reference", dtype), run("auto", dtype)
    assert len(calls) == 1
    if dtype == torch.float64:
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b)
        return
    exact = run("reference", torch.float64)
    for e, r, g in zip(exact, ref, got):
        ref_err, got_err = (r - e).abs().max().item(), (g - e).abs().max().item()
        assert got_err <= 4 * ref_err + 1e-6 * e.abs().max().item(), (got_err, ref_err)


def test_capsnet_trains_the_same_with_and_without_the_kernel(calls):
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    losses = []
    for setting in ("auto", "fused"):
        torch.manual_seed(0)
        model = capslab.build_model("capsnet", capslab.DataInfo(1, 28, 28, 10))
        loss = capslab.build_loss("margin")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        values = []
        for _ in range(4):
            with backends.use(setting):
                value = loss(model(x, y).scores, y)
            opt.zero_grad()
            value.backward()
            opt.step()
            values.append(value.item())
        losses.append(values)
    assert len(calls) == 4
    assert len(set(losses[0])) == 4  # the parameters moved
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"leaky": True, "iterations": 2}, {"gradient": "detach_inner"}])
def test_votes_in_and_weights_in_kernels_agree_with_the_plain_loop(options, calls):
    """The kernel on stored votes (routing(votes), votes stored (I, J, D, B)) and on W and u (inside
    ClassCapsules, votes never stored) give the plain loop's poses and gradients."""
    layer, routing = layer_for(options)
    x, W = inputs()
    with torch.no_grad():
        layer.weight.copy_(W)
        routing.bias.normal_(0, 0.1)
    params = [x, layer.weight, routing.bias]
    p = routing.params
    v, *_ = plain_dynamic(x, layer.weight, routing.bias, p.iterations, p.leaky, p.gradient == "detach_inner")
    want = grads([v], params)
    stored = routing(capslab.compute_votes(x, layer.weight, "ijdb")).poses
    direct = layer(x).poses
    assert len(calls) == 2
    for poses in (stored, direct):
        torch.testing.assert_close(poses, v)
        for got, ref in zip(grads([poses], params), want):
            torch.testing.assert_close(got, ref)
