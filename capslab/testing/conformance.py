"""The conformance suite: the same checks over every registered routing, squash, loss and model.

A plugin author runs it over their own components (see :func:`cases`); capslab's tests run it over
every built-in. Each check takes a registry name and raises AssertionError on failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from capslab.data.base import DataInfo
from capslab.plugin import registry
from capslab.routing.base import Routing, RoutingResult, RoutingSpec

Check = Callable[[str], None]
SMALL = RoutingSpec(in_caps=6, out_caps=4, pose_dim=5, in_pose_dim=3)  # I, J, D, D_in
TINY = RoutingSpec(in_caps=4, out_caps=3, pose_dim=4, in_pose_dim=2)  # for float64 gradcheck
HUGE = 1e4


def make_routing(name: str, spec: RoutingSpec = SMALL, dtype: torch.dtype = torch.float32, seed: int = 0) -> Routing:
    torch.manual_seed(seed)
    return registry("routing").get(name)(spec).to(dtype)


def routing_inputs(spec: RoutingSpec, batch: int = 3, scale: float = 0.5, dtype=torch.float32, seed: int = 1):
    """votes (B, I, J, D), activations (B, I) in (0, 1), poses (B, I, D_in)."""
    g = torch.Generator().manual_seed(seed)
    votes = torch.randn(batch, spec.in_caps, spec.out_caps, spec.pose_dim, generator=g, dtype=dtype) * scale
    acts = torch.rand(batch, spec.in_caps, generator=g, dtype=dtype) * 0.9 + 0.05
    poses = torch.randn(batch, spec.in_caps, spec.in_pose_dim or 1, generator=g, dtype=dtype)
    return votes, acts, poses


def _run(routing: Routing, votes, acts, poses, diagnostics=False, seed: int = 2) -> RoutingResult:
    torch.manual_seed(seed)  # stochastic routings (``random``) draw from the global generator
    return routing(votes, acts, poses, diagnostics=diagnostics)


def _finite(t: torch.Tensor | None, what: str) -> None:
    assert t is not None, f"{what} is missing"
    assert torch.isfinite(t).all(), f"{what} has non-finite values"


# ---------------------------------------------------------------------------------------- routing
def routing_shapes(name: str) -> None:
    r = make_routing(name)
    votes, acts, poses = routing_inputs(SMALL)
    B, (I, J, D) = votes.shape[0], (SMALL.in_caps, SMALL.out_caps, SMALL.pose_dim)
    out = _run(r, votes, acts, poses)
    assert out.poses.shape == (B, J, D), f"poses {tuple(out.poses.shape)} != {(B, J, D)}"
    assert out.activations.shape == (B, J), f"activations {tuple(out.activations.shape)} != {(B, J)}"
    diag = _run(r, votes, acts, poses, diagnostics=True)
    assert diag.coupling is not None and diag.coupling.shape == (B, I, J), "diagnostics: coupling must be (B, I, J)"
    for field in ("logit_change", "entropy"):
        t = getattr(diag, field)
        assert t is not None and t.dim() == 1 and t.numel() >= 1, (
            f"diagnostics: {field} must be a 1-D per-iteration tensor"
        )
        _finite(t, field)
    torch.testing.assert_close(diag.poses, out.poses, msg="diagnostics must not change the poses")


def routing_extreme_inputs(name: str) -> None:
    r = make_routing(name)
    for scale, label in ((0.0, "zero"), (HUGE, "very large")):
        votes, acts, poses = routing_inputs(SMALL, scale=1.0)
        votes = (votes * scale).requires_grad_()
        out = _run(r, votes, acts, poses * (scale if scale else 1.0))
        _finite(out.poses, f"poses for {label} votes")
        _finite(out.activations, f"activations for {label} votes")
        (out.poses.sum() + out.activations.sum()).backward()
        _finite(votes.grad, f"gradient for {label} votes")


def routing_gradients(name: str) -> None:
    r = make_routing(name)
    votes, acts, poses = routing_inputs(SMALL)
    votes.requires_grad_()
    out = _run(r, votes, acts, poses)
    (out.poses.square().sum() + out.activations.sum()).backward()
    assert votes.grad is not None and votes.grad.abs().sum() > 0, "no gradient reaches the votes"
    for pname, p in r.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"parameter {pname} has a non-finite gradient"


def routing_determinism(name: str) -> None:
    votes, acts, poses = routing_inputs(SMALL)
    a = _run(make_routing(name), votes, acts, poses)
    b = _run(make_routing(name), votes, acts, poses)
    torch.testing.assert_close(a.poses, b.poses, rtol=0, atol=0, msg="same seed, different poses")
    torch.testing.assert_close(a.activations, b.activations, rtol=0, atol=0)


def routing_batch_of_one(name: str) -> None:
    """A batch of one trains; in evaluation, routing is per example (batch statistics, as variational Bayes's
    BatchNorm, may couple examples in training only)."""
    r = make_routing(name)
    votes, acts, poses = routing_inputs(SMALL, batch=3)
    out = _run(r, votes[:1], acts[:1], poses[:1])
    assert out.poses.shape == (1, SMALL.out_caps, SMALL.pose_dim)
    r.eval()
    if not r.stochastic:  # routing is per example: batch-mates must not matter
        one, full = _run(r, votes[:1], acts[:1], poses[:1]), _run(r, votes, acts, poses)
        torch.testing.assert_close(one.poses, full.poses[:1], msg="routing of example 0 depends on its batch-mates")
        torch.testing.assert_close(one.activations, full.activations[:1], msg="activations depend on batch-mates")


def routing_requires_its_inputs(name: str) -> None:
    """A routing that declares ``needs_activations`` / ``needs_poses`` and gets none raises an error naming
    itself (never a silent constant); one that needs neither routes without them."""
    from capslab.routing.base import MissingRoutingInput

    r = make_routing(name)
    votes, acts, poses = routing_inputs(SMALL)
    for needed, kwargs, what in (
        (r.needs_activations, {"poses": poses}, "activations"),
        (r.needs_poses, {"activations": acts}, "poses"),
    ):
        if needed:
            try:
                r(votes, **kwargs)
            except MissingRoutingInput as exc:
                assert name in str(exc) and what in str(exc), f"the error must name {name!r} and {what}: {exc}"
            else:
                raise AssertionError(f"called without input {what}, which it declares it needs, it did not raise")
    if not (r.needs_activations or r.needs_poses):
        _finite(_run(r, votes, None, None).poses, "poses routed without activations or poses")


AGREE = RoutingSpec(in_caps=128, out_caps=5, pose_dim=8, in_pose_dim=4)  # a layer of 128 input capsules


def agreeing_votes(spec: RoutingSpec, scale: float, target: int, batch: int = 4, seed: int = 5):
    """Votes (B, I, J, D) at RMS ~ ``scale`` where every input's vote for output ``target`` is one shared
    vector (plus 10% noise) and the votes for the other outputs are independent; activations in (0.05, 0.95)."""
    g = torch.Generator().manual_seed(seed)
    B, I, J, D = batch, spec.in_caps, spec.out_caps, spec.pose_dim
    votes = torch.randn(B, I, J, D, generator=g)
    shared = torch.randn(B, 1, D, generator=g)
    votes[:, :, target] = shared + 0.1 * torch.randn(B, I, D, generator=g)
    acts = torch.rand(B, I, generator=g) * 0.9 + 0.05
    poses = torch.randn(B, I, spec.in_pose_dim or 1, generator=g)
    return votes * scale, acts, poses


def routing_ranks_agreement(name: str) -> None:
    """At initialisation, at vote scales from 1e-2 to 1, the output whose votes agree comes first: in the
    activations (``ranks_by = "activations"``) or in the total coupling sum_i c_ij (``"coupling"``).
    Routings whose coupling does not come from agreement (``ranks_by = None``) are exempt. In evaluation mode:
    batch statistics (variational Bayes's BatchNorm) compare an output with itself across the batch."""
    r = make_routing(name, AGREE).eval()
    if r.ranks_by is None:
        return
    target = 2
    for scale in (1e-2, 1e-1, 1.0):
        votes, acts, poses = agreeing_votes(AGREE, scale, target)
        with torch.no_grad():
            out = _run(r, votes, acts, poses, diagnostics=True)
        assert out.coupling is not None, f"{name}: diagnostics=True returned no coupling"
        ranked = out.activations if r.ranks_by == "activations" else out.coupling.sum(1)  # (B, J)
        others = torch.cat([ranked[:, :target], ranked[:, target + 1 :]], 1)
        assert (ranked[:, target] > others.max(1).values).all(), (
            f"votes at scale {scale:g}: the agreeing output is not ranked first by the {r.ranks_by} "
            f"({ranked[0].tolist()}, agreeing output {target})"
        )


def routing_gradcheck(name: str) -> None:
    r = make_routing(name, TINY, torch.float64)
    votes, acts, poses = routing_inputs(TINY, batch=2, dtype=torch.float64)

    def f(v):
        out = _run(r, v, acts, poses)
        return out.poses, out.activations

    assert torch.autograd.gradcheck(f, (votes.requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-3)


def routing_votes_storage(name: str) -> None:
    """Every storage of the votes (capslab.routing.backends.VotesLayout), the one its chosen path reads included,
    gives the same poses and gradients: fast paths pick a storage, and each must compute the same."""
    from capslab.layers.class_caps import compute_votes
    from capslab.routing.backends import VotesLayout

    r = make_routing(name, SMALL, torch.float64)
    I, J, D, K = SMALL.in_caps, SMALL.out_caps, SMALL.pose_dim, SMALL.in_pose_dim or SMALL.pose_dim
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(3, I, K, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    W = (torch.randn(J, I, K, D, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    acts = torch.rand(3, I, generator=g, dtype=torch.float64) * 0.9 + 0.05
    wrt = [x, W, *(p for p in r.parameters() if p.requires_grad)]
    layouts = list(VotesLayout)
    results = []
    for layout in layouts:
        out = _run(r, compute_votes(x, W, layout), acts, x)
        grads = torch.autograd.grad(out.poses.square().sum() + out.activations.sum(), wrt, allow_unused=True)
        results.append((layout, out, grads))
    _, ref, ref_grads = results[0]
    for layout, out, grads in results[1:]:
        torch.testing.assert_close(out.poses, ref.poses, msg=f"poses differ with votes stored {layout!r}")
        torch.testing.assert_close(out.activations, ref.activations, msg=f"activations differ ({layout!r})")
        for a, b in zip(grads, ref_grads):
            assert (a is None) == (b is None), f"gradient presence differs with votes stored {layout!r}"
            if a is not None:
                torch.testing.assert_close(a, b, msg=f"gradients differ with votes stored {layout!r}")


def routing_paths_agree(name: str) -> None:
    """The fast paths compute what the reference does: forward and gradients under each setting of the
    backend switch (``auto``, ``fused``, ``reference``; capslab.routing.backends), votes stored as the
    class-capsule layer stores them for that setting."""
    from capslab.layers.class_caps import compute_votes
    from capslab.routing import backends

    r = make_routing(name, SMALL, torch.float64)
    I, J, D, K = SMALL.in_caps, SMALL.out_caps, SMALL.pose_dim, SMALL.in_pose_dim or SMALL.pose_dim
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, I, K, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    W = (torch.randn(J, I, K, D, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    acts = (torch.rand(3, I, generator=g, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    params = [(n, p) for n, p in r.named_parameters() if p.requires_grad]
    wrt, names = [x, W, acts, *(p for _, p in params)], ["x", "W", "activations", *(n for n, _ in params)]
    results = {}
    for setting in ("reference", "fused", "auto"):
        with backends.use(setting):
            out = _run(r, compute_votes(x, W, backends.votes_layout(r, x)), acts, x)
            loss = (out.poses * torch.linspace(-1, 1, J * D, dtype=torch.float64).view(J, D)).sum()
            loss = loss + (out.activations * torch.arange(J, dtype=torch.float64)).sum()
            results[setting] = (out, torch.autograd.grad(loss, wrt, allow_unused=True))
    ref, ref_grads = results["reference"]
    for setting in ("fused", "auto"):
        out, grads = results[setting]
        torch.testing.assert_close(out.poses, ref.poses, msg=f"poses differ between {setting!r} and the reference")
        torch.testing.assert_close(out.activations, ref.activations, msg=f"activations differ ({setting!r})")
        for what, a, b in zip(names, grads, ref_grads, strict=True):
            assert (a is None) == (b is None), f"gradient of {what}: present on one path only ({setting!r})"
            if a is not None:
                torch.testing.assert_close(a, b, msg=f"gradient of {what} differs ({setting!r})")


# ---------------------------------------------------------------------------------------- squash
def make_squash(name: str):
    return registry("squash").get(name)()


def squash_shape_and_range(name: str) -> None:
    sq = make_squash(name)
    s = torch.randn(3, 7, 5) * 3
    v = sq(s)
    assert v.shape == s.shape
    n_v, n_s = v.norm(dim=-1), s.norm(dim=-1)
    assert (n_v < 1).all() and (n_v >= 0).all(), "squashed lengths must lie in [0, 1)"
    cos = torch.nn.functional.cosine_similarity(v, s, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos), msg="squash must keep the direction")
    order = n_s.flatten().argsort()
    assert (n_v.flatten()[order].diff() >= -1e-6).all(), "squashed length must grow with |s|"
    torch.testing.assert_close(sq(s.transpose(0, 2), dim=0).transpose(0, 2), v, msg="dim argument ignored")


def squash_extreme_inputs(name: str) -> None:
    sq = make_squash(name)
    for s in (torch.zeros(2, 4, 6), torch.full((2, 4, 6), HUGE), torch.full((2, 4, 6), 1e-20)):
        s = s.clone().requires_grad_()
        v = sq(s)
        _finite(v, "squash output")
        v.sum().backward()
        _finite(s.grad, "squash gradient")


def squash_gradcheck(name: str) -> None:
    sq = make_squash(name).double()
    s = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sq, (s,), eps=1e-6, atol=1e-5, rtol=1e-3)


def squash_determinism_and_batch_of_one(name: str) -> None:
    s = torch.randn(3, 5, 8)
    torch.testing.assert_close(make_squash(name)(s), make_squash(name)(s), rtol=0, atol=0)
    torch.testing.assert_close(make_squash(name)(s[:1]), make_squash(name)(s)[:1])


# ---------------------------------------------------------------------------------------- loss
def make_loss(name: str):
    return registry("loss").get(name)()


def _scores(batch=4, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, classes, generator=g) * 0.8 + 0.1, torch.randint(0, classes, (batch,), generator=g)


def loss_scalar_and_order(name: str) -> None:
    loss = make_loss(name)
    scores, y = _scores()
    value = loss(scores, y)
    assert value.dim() == 0, "a loss returns a scalar"
    right = torch.nn.functional.one_hot(y, 5).float() * 0.95 + 0.02
    wrong = torch.nn.functional.one_hot((y + 1) % 5, 5).float() * 0.95 + 0.02
    assert loss(right, y) < loss(wrong, y), "the loss must prefer the right class"
    multi = torch.nn.functional.one_hot(y, 5) | torch.nn.functional.one_hot((y + 2) % 5, 5)
    _finite(loss(scores, multi), "loss with multi-hot targets")


def loss_extreme_inputs(name: str) -> None:
    loss = make_loss(name)
    _, y = _scores()
    for scores in (torch.zeros(4, 5), torch.full((4, 5), HUGE), torch.ones(4, 5)):
        scores = scores.clone().requires_grad_()
        value = loss(scores, y)
        _finite(value, "loss")
        value.backward()
        _finite(scores.grad, "loss gradient")


def loss_gradients_and_batch_of_one(name: str) -> None:
    loss = make_loss(name)
    scores, y = _scores()
    scores.requires_grad_()
    loss(scores, y).backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0, "no gradient reaches the scores"
    torch.testing.assert_close(loss(scores, y), make_loss(name)(scores, y), rtol=0, atol=0)
    assert loss(scores[:1], y[:1]).dim() == 0


def loss_gradcheck(name: str) -> None:
    loss = make_loss(name).double()
    scores, y = _scores()
    assert torch.autograd.gradcheck(
        lambda s: loss(s, y, step=10), (scores.double().requires_grad_(),), eps=1e-6, atol=1e-5
    )


# ---------------------------------------------------------------------------------------- model
def model_forward_backward(name: str) -> None:
    from capslab.build import build_model

    torch.manual_seed(0)
    info = DataInfo(1, 28, 28, 10)
    model = build_model(name, info)
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    model.train()
    out = model(x, y, diagnostics=True)
    assert out.scores.shape == (2, 10)
    if out.reconstruction is not None:
        assert out.reconstruction.shape == x.shape
    (out.scores.sum() + (out.reconstruction.sum() if out.reconstruction is not None else 0)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        _finite(model(x).scores, "eval scores")


def model_feeds_its_routing(name: str) -> None:
    """The model hands every routing it calls input activations (B, I) in [0, 1] and poses (B, I, D_in),
    so a routing that needs them (EM, variational Bayes, self-routing) gets its paper's inputs."""
    from capslab.build import build
    from capslab.models.base import BuildContext
    from capslab.squash import default_squash

    seen: list[tuple] = []

    class Probe(Routing):  # a routing that needs everything and records what it got
        name = "conformance_probe"
        needs_activations = needs_poses = True

        def route(self, votes, activations, poses, iterations, diagnostics):
            seen.append((votes.shape, activations, poses))
            B, _, J, D = votes.shape
            return RoutingResult(votes.mean(1), activations.mean(1, keepdim=True).expand(B, J))

    torch.manual_seed(0)
    model = build("model", name, BuildContext(DataInfo(1, 28, 28, 10), Probe, default_squash()))
    model(torch.rand(2, 1, 28, 28), torch.tensor([3, 7]))
    for shape, acts, poses in seen:
        B, I = shape[:2]
        assert acts.shape == (B, I), f"activations {tuple(acts.shape)} != {(B, I)}"
        assert (acts >= 0).all() and (acts <= 1).all(), "input activations must lie in [0, 1]"
        assert poses.dim() == 3 and poses.shape[:2] == (B, I), f"poses {tuple(poses.shape)} != (B, I, D_in)"


CHECKS: dict[str, list[Check]] = {
    "routing": [
        routing_shapes,
        routing_extreme_inputs,
        routing_gradients,
        routing_determinism,
        routing_batch_of_one,
        routing_gradcheck,
        routing_votes_storage,
        routing_paths_agree,
        routing_requires_its_inputs,
        routing_ranks_agreement,
    ],
    "squash": [squash_shape_and_range, squash_extreme_inputs, squash_gradcheck, squash_determinism_and_batch_of_one],
    "loss": [loss_scalar_and_order, loss_extreme_inputs, loss_gradients_and_batch_of_one, loss_gradcheck],
    "model": [model_forward_backward, model_feeds_its_routing],
}


def cases(kinds=tuple(CHECKS), names: list[str] | None = None) -> Iterator[tuple[str, str, Check]]:
    """(kind, name, check) for every registered component (or only ``names``), for parametrize.

    A name in ``names`` that no plugin registered raises (a plugin whose hook lacks ``@capslab.hookimpl``
    registers nothing: its own conformance tests must fail, not run zero cases)."""
    if names is not None:
        known = {entry.name for kind in kinds for entry in registry(kind)}
        missing = [n for n in names if n not in known]
        if missing:
            from capslab.errors import UnknownNameError

            unknown = UnknownNameError(" / ".join(kinds), missing[0], known)
            raise LookupError(
                f"capslab.testing.cases: {unknown}. A plugin's components are registered once it "
                "is installed and its register_* hook is decorated with @capslab.hookimpl "
                "(`capslab plugins` lists what is registered)"
            )
    for kind in kinds:
        for entry in registry(kind):
            if names is None or entry.name in names:
                for check in CHECKS[kind]:
                    yield kind, entry.name, check


def run_all(kinds=tuple(CHECKS), names: list[str] | None = None) -> None:
    """Run every check, raising on the first failure (outside pytest)."""
    for kind, name, check in cases(kinds, names):
        try:
            check(name)
        except AssertionError as exc:
            raise AssertionError(f"{kind} {name!r}: {check.__name__}: {exc}") from exc
