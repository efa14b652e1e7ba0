"""The fast paths (votes stored (B, I, J, D), the fused agreement loop, pooled buffers) against plain
einsum transcriptions, forward and gradients, in float64 on small shapes."""

import pytest
import torch

import capslab
from capslab import buffers
from capslab.routing import backends, fused
from capslab.routing.backends import Backend

B, I, J, D, K = 3, 20, 4, 5, 3


def squash(s):
    sq = s.pow(2).sum(-1, keepdim=True)
    return s * (sq + 1e-7).sqrt() / (1 + sq)  # Sabour Eq. 1, eps inside the root (the sabour plugin)


def plain_dynamic(x, W, bias, iterations, leaky=False, detach_inner=False):
    """Procedure 1 on einsum votes; returns poses, coupling (B, I, J), |delta b| and entropy per iteration."""
    votes = torch.einsum("bik,jikd->bijd", x, W)  # (B, I, J, D)
    inner = votes.detach() if detach_inner else votes
    b = votes.new_zeros(B, I, J)
    deltas, entropies = [], []
    for r in range(iterations):
        u = votes if r == iterations - 1 else inner
        if leaky:
            c = torch.cat([b.new_zeros(B, I, 1), b], -1).softmax(-1)[..., 1:]
        else:
            c = b.softmax(-1)  # over the outputs j
        s = torch.einsum("bij,bijd->bjd", c, u)
        v = squash(s + bias if bias is not None else s)
        p = c / c.sum(-1, keepdim=True)
        entropies.append(-(p * p.log()).sum(-1).mean())
        a = torch.einsum("bijd,bjd->bij", u, v)
        deltas.append(a.abs().mean())
        b = b + a
    return v, c, torch.stack(deltas), torch.stack(entropies)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, I, K, generator=g, dtype=torch.float64, requires_grad=True)
    W = (0.5 * torch.randn(J, I, K, D, generator=g, dtype=torch.float64)).requires_grad_()
    return x, W


def grads(outputs, wrt, seed=1):
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, wrt, allow_unused=True)


STORED = {"ibjd": (1, 0, 2, 3), "ijdb": (1, 2, 3, 0), "bjid": (0, 2, 1, 3)}  # (B, I, J, D) -> storage order


@pytest.mark.parametrize("layout", sorted(STORED))
def test_votes_layouts_match_einsum(layout):
    x, W = inputs()
    votes = capslab.compute_votes(x, W, layout)
    ref = torch.einsum("bik,jikd->bijd", x, W)
    assert votes.shape == (B, I, J, D)
    assert votes.permute(*STORED[layout]).is_contiguous()
    torch.testing.assert_close(votes, ref)
    for got, want in zip(grads([votes], [x, W]), grads([ref], [x, W])):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"leaky": True},
        {"gradient": "detach_inner"},
        {"bias": False},
        {"iterations": 1},
        {"iterations": 5},
    ],
)
def test_fused_dynamic_matches_plain_einsum(options):
    spec = capslab.RoutingSpec(I, J, D, K)
    routing = capslab.build_routing({"name": "dynamic", **options}, spec).double()
    layer = capslab.ClassCapsules(I, K, J, D, routing).double()
    x, W = inputs()
    with torch.no_grad():
        layer.weight.copy_(W)
        if routing.bias is not None:
            routing.bias.normal_(0, 0.1)
    res = layer(x)  # the fast path (diagnostics take the plain loop, checked below)
    diag = layer(x, diagnostics=True)
    p = routing.params
    v, c, deltas, entropies = plain_dynamic(
        x, layer.weight, routing.bias, p.iterations, p.leaky, p.gradient == "detach_inner"
    )
    torch.testing.assert_close(res.poses, v)
    torch.testing.assert_close(res.activations, v.norm(dim=-1))
    torch.testing.assert_close(diag.poses, v)
    torch.testing.assert_close(diag.coupling, c)
    torch.testing.assert_close(diag.logit_change, deltas.float())
    torch.testing.assert_close(diag.entropy, entropies.float())
    params = [x, layer.weight] + ([routing.bias] if routing.bias is not None else [])
    got = grads([res.poses, res.activations], params)
    want = grads([v, v.norm(dim=-1)], params)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("storage", ["ibjd", "bijd"])
@pytest.mark.parametrize("name", ["dynamic", "max_min", "uniform", "random"])
def test_fused_equals_plain_path_of_each_agreement_routing(name, storage):
    spec = capslab.RoutingSpec(I, J, D, K)
    routing = capslab.build_routing(name, spec).double()
    x, W = inputs()
    outs = []
    for setting, path in (("fused", Backend.FUSED), ("reference", Backend.REFERENCE)):
        with backends.use(setting):
            votes = capslab.compute_votes(x, W, "ibjd")
            if storage == "bijd":  # contiguous (B, I, J, D) votes, e.g. built by a user: also fused
                votes = votes.contiguous()
                assert fused.fusable(votes)
            assert backends.choose(routing, votes, False) is path
            torch.manual_seed(3)  # the random baseline draws its logits here
            res = routing(votes)
        outs.append([res.poses, *grads([res.poses, res.activations], [x, W, routing.bias])])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_gradient_reaches_the_bias_when_the_votes_are_frozen():
    spec = capslab.RoutingSpec(I, J, D, K)
    routing = capslab.build_routing("dynamic", spec).double()
    x, W = inputs()
    votes = capslab.compute_votes(x.detach(), W.detach(), "ibjd")
    got = grads([routing(votes).poses], [routing.bias])[0]
    with backends.use("reference"):
        want = grads([routing(votes).poses], [routing.bias])[0]
    torch.testing.assert_close(got, want)
    assert got.abs().sum() > 0


def test_non_contiguous_votes_take_the_plain_loop():
    spec = capslab.RoutingSpec(I, J, D, K)
    routing = capslab.build_routing("dynamic", spec).double()
    x, W = inputs()
    a = routing(capslab.compute_votes(x, W, "bjid")).poses
    b = routing(capslab.compute_votes(x, W, "ibjd")).poses
    torch.testing.assert_close(a, b)


def test_bf16_autocast_runs_in_float32_logits_and_stays_close():
    torch.manual_seed(0)
    info = capslab.DataInfo(1, 28, 28, 10)
    model = capslab.build_model("capsnet", info)
    images, labels = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    ref = model(images, labels).poses
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, labels)
    assert out.poses.dtype == torch.float32
    torch.testing.assert_close(out.poses, ref, atol=0.02, rtol=0.1)
    (out.poses.sum() + out.scores.sum()).backward()
    assert model.caps.weight.grad.dtype == torch.float32 and torch.isfinite(model.caps.weight.grad).all()


def test_pooled_buffers_never_alias_a_live_graph():
    spec = capslab.RoutingSpec(I, J, D, K)
    layer = capslab.ClassCapsules(I, K, J, D, capslab.build_routing("dynamic", spec)).double()
    x1, _ = inputs(1)
    x2, _ = inputs(2)
    ref = [grads([layer(x).poses], [x, layer.weight]) for x in (x1, x2)]  # one graph at a time
    r1, r2 = layer(x1), layer(x2)  # two graphs alive at once: the second must not reuse the first's votes
    got = [grads([r.poses], [x, layer.weight]) for r, x in ((r1, x1), (r2, x2))]
    for a, b in zip(ref, got):
        for g1, g2 in zip(a, b):
            torch.testing.assert_close(g1, g2)


def test_scratch_reuses_a_free_tensor_only():
    like = torch.zeros(1)
    a = buffers.scratch("test.slot", (5, 4), like)
    ptr = a.data_ptr()
    del a
    assert buffers.scratch("test.slot", (5, 4), like).data_ptr() == ptr  # nothing else held it: reused
    held = buffers.scratch("test.slot", (5, 4), like)  # the very tensor handed out, kept by the caller
    assert buffers.scratch("test.slot", (5, 4), like).data_ptr() != held.data_ptr()
    a = buffers.scratch("test.slot", (5, 4), like)
    view = a.view(20)  # a view of it, the tensor itself dropped
    del a
    assert buffers.scratch("test.slot", (5, 4), like).data_ptr() != view.data_ptr()
    assert buffers.scratch("test.slot", (2, 2), like).shape == (2, 2)
    buffers.release()


def test_the_private_use_counts_buffers_rely_on_still_behave():
    """capslab.buffers decides reuse from two private torch APIs; if the pinned torch changes them, this fails
    (reuse would otherwise stop silently, or worse, alias live data)."""
    assert hasattr(torch._C, "_storage_Use_Count"), "torch._C._storage_Use_Count is gone: update capslab.buffers"
    t = torch.empty(3, 4)
    assert hasattr(t, "_use_count"), "Tensor._use_count is gone: update capslab.buffers"
    alone = torch._C._storage_Use_Count(t.untyped_storage()._cdata), t._use_count()
    assert alone[1] <= 1 and buffers._unshared(t)
    view = t.view(12)  # another tensor on the same storage
    assert torch._C._storage_Use_Count(t.untyped_storage()._cdata) > alone[0] and not buffers._unshared(t)
    del view
    assert buffers._unshared(t)
    alias = t.detach()  # what AccumulateGrad stores as a .grad: no view base, the same storage
    assert not buffers._unshared(t)
    del alias
    assert buffers._unshared(t)
    saved = torch.exp(t.requires_grad_())  # a graph saving t (exp saves its output; mul saves its input)
    kept = (t * 2).sum()
    assert not buffers._unshared(t)
    del kept, saved
    assert buffers._unshared(t)


def test_a_training_step_reuses_its_votes_buffer():
    spec = capslab.RoutingSpec(I, J, D, K)
    layer = capslab.ClassCapsules(I, K, J, D, capslab.build_routing("dynamic", spec))
    x = torch.randn(B, I, K)
    ptrs = []
    for _ in range(3):
        with backends.use("fused"):  # the fused loop's votes are pooled
            out = layer(x)
        out.poses.sum().backward()
        ptrs.append(buffers._slots()["capslab.layers.votes"].data_ptr())
        del out
    assert len(set(ptrs)) == 1, "the votes buffer was not reused across steps"
    buffers.release()


@pytest.mark.parametrize("J", [J, 5])  # 5: no pairs of outputs for the agreement
@pytest.mark.parametrize("storage", ["ibjd", "bijd"])  # per-(b, j) products, and block-diagonal ones
def test_fused_contractions_match_einsum(storage, J):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, I, J, D, generator=g, dtype=torch.float64)
    if storage == "ibjd":
        u = u.transpose(0, 1).contiguous().transpose(0, 1)
    assert (fused.by_output(u) is not None) == (storage == "ibjd")
    assert (fused.by_output(u, 2) is not None) == (storage == "ibjd" and J % 2 == 0)
    c = torch.rand(B, J, I, generator=g, dtype=torch.float64)
    v = torch.randn(B, J, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fused.weighted_sum(c, u), torch.einsum("bji,bijd->bjd", c, u))
    torch.testing.assert_close(fused.agreement(u, v), torch.einsum("bijd,bjd->bji", u, v))
    coefs = torch.rand(B, 3, J, I, generator=g, dtype=torch.float64)
    vecs = [torch.randn(B, J, D, generator=g, dtype=torch.float64) for _ in range(3)]
    out = u.new_empty(B, I, J * D)
    fused.outer_sum(coefs, vecs, out)
    want = sum(torch.einsum("bji,bjd->bijd", coefs[:, m], vecs[m]) for m in range(3))
    torch.testing.assert_close(out.view(B, I, J, D), want)


def test_buffers_made_under_inference_mode_are_not_reused_for_training():
    spec = capslab.RoutingSpec(I, J, D, K)
    layer = capslab.ClassCapsules(I, K, J, D, capslab.build_routing("dynamic", spec)).double()
    x, _ = inputs()
    buffers.release()
    with torch.inference_mode():
        layer(x)
    grads([layer(x).poses], [x])  # would raise if the inference-mode votes buffer were written here
