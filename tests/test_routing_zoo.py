"""The routing zoo against plain loop transcriptions of each paper's equations (float64, B=2, I=5, J=3,
D=4), the baselines' identities, and (slow) one epoch of mnist5k per routing."""

import math

import pytest
import torch

import capslab
from capslab.testing import routing_inputs

SPEC = capslab.RoutingSpec(in_caps=5, out_caps=3, pose_dim=4, in_pose_dim=2)
B, I, J, D = 2, SPEC.in_caps, SPEC.out_caps, SPEC.pose_dim


def inputs(scale=1.0):
    votes, acts, poses = routing_inputs(SPEC, batch=B, dtype=torch.float64, scale=scale)
    return votes, acts, poses, votes.tolist(), acts.tolist(), poses.tolist()


def build(section, seed=0):
    torch.manual_seed(seed)
    return capslab.build_routing(section, SPEC).double()


def randomise(module, seed=3):
    """Non-trivial values for every parameter, so the test sees each one used."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


# ------------------------------------------------------------------ scalar helpers, element by element
def dot(x, y):
    return sum(a * b for a, b in zip(x, y))


def softmax(row):
    e = [math.exp(x - max(row)) for x in row]
    return [x / sum(e) for x in e]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def squash(s):
    n2 = dot(s, s)
    return [x * (n2 + 1e-7) ** 0.5 / (1 + n2) for x in s]


def digamma(x):
    return torch.special.digamma(torch.tensor(x, dtype=torch.float64)).item()


# ------------------------------------------------------------------ max-min (Zhao 2019)
def max_min_normalise(row, lb=0.0, ub=1.0):
    lo, hi = min(row), max(row)
    if hi == lo:  # the documented 0/0 convention: uniform
        return [1 / len(row)] * len(row)
    return [lb + (ub - lb) * (x - lo) / (hi - lo) for x in row]


def procedure_1(u, r, normalise, bias=None):
    """Sabour's Procedure 1 with the coupling normalisation of each input's logits as an argument."""
    out = []
    for b in range(B):
        logits = [[0.0] * J for _ in range(I)]
        for _ in range(r):
            c = [normalise(logits[i]) for i in range(I)]
            v = [
                squash(
                    [sum(c[i][j] * u[b][i][j][d] for i in range(I)) + (bias[j][d] if bias else 0.0) for d in range(D)]
                )
                for j in range(J)
            ]
            for i in range(I):
                for j in range(J):
                    logits[i][j] += dot(u[b][i][j], v[j])
        out.append(v)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_max_min_matches_the_loop(iterations):
    votes, _, _, u, _, _ = inputs()
    r = build({"name": "max_min", "iterations": iterations, "bias": False})
    expected = procedure_1(u, iterations, max_min_normalise)
    out = r(votes)
    torch.testing.assert_close(out.poses, expected)
    torch.testing.assert_close(out.activations, expected.norm(dim=-1))


def test_max_min_with_bounds_and_bias_matches_the_loop():
    votes, _, _, u, _, _ = inputs()
    r = build({"name": "max_min", "lb": 0.2, "ub": 0.7, "bias_init": 0.3})
    expected = procedure_1(u, 3, lambda row: max_min_normalise(row, 0.2, 0.7), bias=[[0.3] * D] * J)
    torch.testing.assert_close(r(votes).poses, expected)


def test_max_min_coupling_spans_zero_to_one_per_input():
    votes, _, _, _, _, _ = inputs()
    c = build({"name": "max_min", "iterations": 3})(votes, diagnostics=True).coupling  # (B, I, J)
    assert ((c >= 0) & (c <= 1)).all()
    torch.testing.assert_close(c.amax(-1), torch.ones(B, I, dtype=c.dtype))
    torch.testing.assert_close(c.amin(-1), torch.zeros(B, I, dtype=c.dtype))
    assert not torch.allclose(c.sum(-1), torch.ones(B, I, dtype=c.dtype)), "max-min couplings need not sum to 1"


def test_max_min_first_iteration_is_dynamic_routing_and_bounds_are_checked():
    votes, _, _, _, _, _ = inputs()
    one = build({"name": "max_min", "iterations": 1})(votes)
    torch.testing.assert_close(one.poses, build({"name": "dynamic", "iterations": 1})(votes).poses)
    with pytest.raises(Exception, match="lb < ub"):
        capslab.build_routing({"name": "max_min", "lb": 1.0, "ub": 0.5}, SPEC)


# ------------------------------------------------------------------ baselines
def test_uniform_equals_dynamic_routing_with_one_iteration():
    votes, _, _, u, _, _ = inputs()
    uni, dyn = build("uniform"), build({"name": "dynamic", "iterations": 1})
    a, b = uni(votes, diagnostics=True), dyn(votes, diagnostics=True)
    for field in ("poses", "activations", "coupling", "logit_change", "entropy"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field))
    torch.testing.assert_close(a.coupling, torch.full((B, I, J), 1 / J, dtype=torch.float64))
    torch.testing.assert_close(uni(votes, iterations=4).poses, a.poses)  # nothing to iterate on
    torch.testing.assert_close(a.poses, procedure_1(u, 1, softmax, bias=[[0.1] * D] * J))


def test_random_coupling_is_drawn_per_example_and_per_forward_under_the_seed():
    votes, _, _, u, _, _ = inputs()
    r = build("random")
    torch.manual_seed(7)
    first = r(votes, diagnostics=True)
    torch.manual_seed(7)
    again = r(votes, diagnostics=True)
    other = r(votes, diagnostics=True)
    c = first.coupling  # (B, I, J)
    torch.testing.assert_close(again.coupling, c, rtol=0, atol=0)
    assert not torch.allclose(other.coupling, c), "a new forward must draw new couplings"
    assert not torch.allclose(c[0], c[1]), "each example draws its own couplings"
    torch.testing.assert_close(c.sum(-1), torch.ones(B, I, dtype=c.dtype))
    # the rest is plain aggregation: v_j = squash(sum_i c_ij u_hat_{j|i} + bias_j)
    cl = c.tolist()
    expected = [
        [squash([sum(cl[b][i][j] * u[b][i][j][d] for i in range(I)) + 0.1 for d in range(D)]) for j in range(J)]
        for b in range(B)
    ]
    torch.testing.assert_close(first.poses, torch.tensor(expected, dtype=torch.float64))


def test_random_with_zero_spread_is_uniform():
    votes, _, _, _, _, _ = inputs()
    torch.testing.assert_close(build({"name": "random", "std": 0.0})(votes).poses, build("uniform")(votes).poses)


# ------------------------------------------------------------------ inverted dot-product attention (Tsai 2020)
def layer_norm(x, gain, shift, eps=1e-5):
    mean = sum(x) / len(x)
    var = sum((a - mean) ** 2 for a in x) / len(x)
    return [(a - mean) / math.sqrt(var + eps) * g + s for a, g, s in zip(x, gain, shift)]


def inverted_attention(u, T, gain, shift, w, w0):
    poses, acts = [], []
    for b in range(B):
        a = [[0.0] * J for _ in range(I)]  # the first pass is uniform
        for _ in range(T):
            r = [softmax(a[i]) for i in range(I)]
            p = [
                layer_norm([sum(r[i][j] * u[b][i][j][d] for i in range(I)) for d in range(D)], gain, shift)
                for j in range(J)
            ]
            a = [[dot(u[b][i][j], p[j]) / math.sqrt(D) for j in range(J)] for i in range(I)]
        poses.append(p)
        acts.append([sigmoid(dot(w, p[j]) + w0) for j in range(J)])
    return torch.tensor(poses, dtype=torch.float64), torch.tensor(acts, dtype=torch.float64)


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_inverted_dot_product_matches_the_loop(iterations):
    votes, _, _, u, _, _ = inputs()
    r = build({"name": "inverted_dot_product", "iterations": iterations})
    randomise(r)
    poses, acts = inverted_attention(
        u, iterations, r.norm.weight.tolist(), r.norm.bias.tolist(), r.readout.weight[0].tolist(), r.readout.bias.item()
    )
    out = r(votes, diagnostics=True)
    torch.testing.assert_close(out.poses, poses)
    torch.testing.assert_close(out.activations, acts)
    assert out.logit_change.shape == (iterations,) and out.entropy.shape == (iterations,)
    torch.testing.assert_close(out.entropy[0], torch.tensor(math.log(J)))  # uniform first pass


def test_inverted_dot_product_defaults_to_two_passes():
    assert build("inverted_dot_product").iterations == 2


# ------------------------------------------------------------------ self-routing (Hahn 2019)
def self_routing(u, acts, x, W, br):
    poses, out_acts = [], []
    for b in range(B):
        c = [
            softmax([sum(W[i][k][j] * x[b][i][k] for k in range(len(x[b][i]))) + br[i][j] for j in range(J)])
            for i in range(I)
        ]
        a = acts[b]
        out_acts.append([sum(c[i][j] * a[i] for i in range(I)) / sum(a) for j in range(J)])
        norm = [sum(c[i][j] * a[i] for i in range(I)) for j in range(J)]
        poses.append(
            [[sum(c[i][j] * a[i] / norm[j] * u[b][i][j][d] for i in range(I)) for d in range(D)] for j in range(J)]
        )
    return torch.tensor(poses, dtype=torch.float64), torch.tensor(out_acts, dtype=torch.float64)


@pytest.mark.parametrize("pose_scale", ["raw", "rms"])
def test_self_routing_matches_the_loop(pose_scale):
    votes, acts, x, u, a, xl = inputs()
    r = build({"name": "self_routing", "pose_scale": pose_scale})
    randomise(r)
    x = x * 0.05  # CapsNet-like pose scale: rms routes as on unit-RMS poses
    xs = x / x.square().mean((1, 2), keepdim=True).sqrt() if pose_scale == "rms" else x
    poses, out_acts = self_routing(u, a, xs.tolist(), r.weight.tolist(), r.bias.tolist())
    out = r(votes, acts, x)
    torch.testing.assert_close(out.poses, poses)
    torch.testing.assert_close(out.activations, out_acts)
    torch.testing.assert_close(out.activations.sum(-1), torch.ones(B, dtype=torch.float64))
    squashed = build({"name": "self_routing", "squash_poses": True, "pose_scale": pose_scale})
    squashed.load_state_dict(r.state_dict())
    torch.testing.assert_close(squashed(votes, acts, x).poses, r.squash(poses))


def test_self_routing_starts_uniform_and_needs_poses():
    votes, acts, x, _, _, _ = inputs()
    r = build("self_routing")  # W^r and b^r zero-initialised
    out = r(votes, acts, x, diagnostics=True)
    torch.testing.assert_close(out.coupling, torch.full((B, I, J), 1 / J, dtype=torch.float64))
    torch.testing.assert_close(out.activations, torch.full((B, J), 1 / J, dtype=torch.float64))
    assert out.logit_change.tolist() == [0.0]
    with pytest.raises(capslab.CapslabError, match="'self_routing' needs the input capsules' activations"):
        r(votes, None, x)  # never a silent a_i = 1 (every a_j would start at exactly 1/J)
    with pytest.raises(capslab.CapslabError, match="poses"):
        r(votes, acts)


# ------------------------------------------------------------------ variational Bayes (Ribeiro 2020)
def variational_bayes(u, acts, T, beta_a, beta_u, alpha0=1.0, kappa0=1.0, m0=0.0, psi0=1.0, mixing=True):
    nu0 = D + 1.0
    poses, out_acts = [], []
    for b in range(B):
        a = acts[b]
        R = [[1 / J] * J for _ in range(I)]
        for t in range(T):
            alpha, kappa, nu, m, inv_psi, e_ln_lambda = [], [], [], [], [], []
            for j in range(J):
                Rj = sum(R[i][j] * a[i] for i in range(I))
                alpha.append(alpha0 + Rj), kappa.append(kappa0 + Rj), nu.append(nu0 + Rj)
                mu = [sum(R[i][j] * a[i] * u[b][i][j][d] for i in range(I)) / Rj for d in range(D)]
                m.append([(Rj * mu[d] + kappa0 * m0) / kappa[j] for d in range(D)])
                inv_psi.append(
                    [
                        1 / psi0
                        + sum(R[i][j] * a[i] * (u[b][i][j][d] - mu[d]) ** 2 for i in range(I))
                        + kappa0 * Rj / kappa[j] * (mu[d] - m0) ** 2
                        for d in range(D)
                    ]
                )
                e_ln_lambda.append(
                    sum(digamma((nu[j] + 1 - k) / 2) for k in range(1, D + 1))
                    + D * math.log(2)
                    - sum(math.log(x) for x in inv_psi[j])
                )
            e_ln_pi = [digamma(alpha[j]) - digamma(sum(alpha)) for j in range(J)]
            if t < T - 1:
                for i in range(I):
                    ln_p = [
                        0.5 * e_ln_lambda[j]
                        - 0.5 * D * math.log(2 * math.pi)
                        - 0.5
                        * (D / kappa[j] + nu[j] * sum((u[b][i][j][d] - m[j][d]) ** 2 / inv_psi[j][d] for d in range(D)))
                        for j in range(J)
                    ]
                    if mixing:
                        R[i] = softmax([e_ln_pi[j] + ln_p[j] for j in range(J)])
                    else:  # the official code: E[ln pi] only in the normaliser
                        z = sum(math.exp(e_ln_pi[j] + ln_p[j]) for j in range(J))
                        R[i] = [math.exp(ln_p[j]) / z for j in range(J)]
        H = [0.5 * D * math.log(2 * math.pi * math.e) - 0.5 * e_ln_lambda[j] for j in range(J)]
        out_acts.append([sigmoid(beta_a[j] - (math.exp(e_ln_pi[j]) * H[j] + beta_u[j])) for j in range(J)])
        poses.append(m)
    return torch.tensor(poses, dtype=torch.float64), torch.tensor(out_acts, dtype=torch.float64)


VB_PLAIN = {"vote_scale": "raw", "batch_norm": False, "pose_norm": False}  # the paper's equations alone


@pytest.mark.parametrize("iterations,mixing", [(1, True), (3, True), (3, False)])
def test_variational_bayes_matches_the_loop(iterations, mixing):
    votes, acts, _, u, a, _ = inputs()
    r = build({"name": "variational_bayes", "iterations": iterations, "mixing_in_assignment": mixing, **VB_PLAIN})
    randomise(r)
    poses, out_acts = variational_bayes(u, a, iterations, r.beta_a.tolist(), r.beta_u.tolist(), mixing=mixing)
    out = r(votes, acts)
    torch.testing.assert_close(out.poses, poses)
    torch.testing.assert_close(out.activations, out_acts)


def test_variational_bayes_priors_are_used():
    votes, acts, _, u, a, _ = inputs()
    priors = dict(alpha0=2.0, kappa0=0.5, m0=0.3, psi0=2.0)
    r = build({"name": "variational_bayes", **priors, **VB_PLAIN})
    poses, out_acts = variational_bayes(u, a, 3, [0.0] * J, [0.0] * J, **priors)
    out = r(votes, acts, diagnostics=True)
    torch.testing.assert_close(out.poses, poses)
    torch.testing.assert_close(out.activations, out_acts)
    torch.testing.assert_close(out.coupling.sum(-1), torch.ones(B, I, dtype=torch.float64))
    assert out.logit_change.shape == (3,) and out.entropy.shape == (3,)


def test_variational_bayes_official_setup_normalises_votes_logits_and_poses():
    votes, acts, _, u, a, _ = inputs()
    votes = votes * 1e-3  # CapsNet-like vote scale: rms makes the result independent of it
    r = build("variational_bayes")  # defaults: vote_scale rms, batch_norm and pose_norm on (the official code)
    randomise(r)
    s = votes.square().mean((1, 2, 3), keepdim=True).sqrt()  # (B, 1, 1, 1)
    poses, out_acts = variational_bayes((votes / s).tolist(), a, 3, r.beta_a.tolist(), r.beta_u.tolist())
    out = r(votes, acts)  # training mode: batch statistics

    def bn(x):  # BatchNorm without affine over the batch
        return (x - x.mean(0)) / (x.var(0, unbiased=False) + 1e-5).sqrt()

    torch.testing.assert_close(out.activations, torch.sigmoid(bn(torch.logit(out_acts))))
    m = (poses * s.view(B, 1, 1)).reshape(B, -1)
    torch.testing.assert_close(out.poses, bn(m).view(B, J, D))
    r.eval()  # running statistics: per example
    torch.testing.assert_close(r(votes[:1], acts[:1]).poses, r(votes, acts).poses[:1])


# ------------------------------------------------------------------ inside a model
ZOO = ["dynamic", "uniform", "random", "max_min", "inverted_dot_product", "self_routing", "variational_bayes"]
TINY_CAPSNET = {"name": "capsnet", "conv_channels": 8, "primary_types": 2, "class_dim": 8, "decoder_hidden": [16, 16]}


@pytest.mark.parametrize("routing", ZOO)
def test_each_routing_drives_a_capsnet(routing):
    torch.manual_seed(0)
    model = capslab.build_model(TINY_CAPSNET, capslab.DataInfo(1, 28, 28, 10), routing)
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([1, 2])
    out = model(x, y, diagnostics=True)
    assert out.scores.shape == (2, 10) and ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.routing.coupling.shape == (2, 2 * 6 * 6, 10)
    (capslab.build_loss("margin")(out.scores, y) + capslab.reconstruction_loss(out.reconstruction, x)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.conv1.weight.grad.abs().sum() > 0


def test_routing_recipes_differ_only_in_their_routing():
    from pathlib import Path

    from ruamel.yaml import YAML

    from capslab.recipe.schema import Recipe

    folder = Path(__file__).resolve().parents[1] / "recipes" / "routing"
    recipes = {
        name: Recipe.model_validate(YAML(typ="safe", pure=True).load(folder / f"{name}.yaml")).to_dict() for name in ZOO
    }
    for name, recipe in recipes.items():
        assert (folder / f"{name}.yaml").read_text().startswith(f"# Run: capslab train recipes/routing/{name}.yaml")
        assert recipe["routing"]["name"] == name
        capslab.build_routing(recipe["routing"], SPEC)  # the plugin's Params accept the section
        rest = {k: v for k, v in recipe.items() if k != "routing"}
        assert rest == {k: v for k, v in recipes["dynamic"].items() if k != "routing"}, f"{name} differs beyond routing"


# ------------------------------------------------------------------ slow: one epoch of mnist5k
CPU_CAPSNET = {"name": "capsnet", "conv_channels": 32, "primary_types": 8}  # 288 input capsules
# Self-routing's routing networks start at zero and Adam moves each weight by about lr per step, so in
# 125 steps its couplings (and so its scores) stay near uniform: it ranks the classes but trails.
MIN_ACCURACY = {"self_routing": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("routing", [*ZOO, "em", "self_attention"])
def test_one_epoch_of_mnist5k(routing):
    torch.manual_seed(0)
    data = capslab.build_dataset("mnist5k")
    train, test = data.load("train"), data.load("test")
    model = capslab.build_model(CPU_CAPSNET, data.info, routing)
    loss_fn = capslab.build_loss("margin")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    model.train()
    for idx in torch.randperm(len(train)).split(32):
        x, y = train.images[idx].float() / 255, train.labels[idx]
        out = model(x, y)
        loss = loss_fn(out.scores, y) + capslab.reconstruction_loss(out.reconstruction, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x.float() / 255).scores.argmax(1) for x in test.images.split(500)])
    accuracy = (pred == test.labels).float().mean().item()
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.05, f"{routing}: loss {first:.3f} -> {last:.3f}"
    floor = MIN_ACCURACY.get(routing, 0.85)
    assert accuracy > floor, f"{routing}: test accuracy {accuracy:.3f} after one epoch (chance 0.1)"


# ------------------------------------------------------------------ inputs a routing needs
@pytest.mark.parametrize("routing", ["em", "variational_bayes", "self_routing"])
def test_missing_activations_name_the_routing_and_the_model(routing):
    model = capslab.build_model(TINY_CAPSNET, capslab.DataInfo(1, 28, 28, 10), routing)
    u = torch.rand(2, model.caps.in_caps, 8)
    votes = capslab.compute_votes(u, model.caps.weight)
    with pytest.raises(capslab.CapslabError, match=f"routing '{routing}' needs .*activations.*model 'capsnet'"):
        model.caps.routing(votes, None, u)


@pytest.mark.parametrize("activations", ["length", "sigmoid"])
def test_capsnet_hands_its_routing_the_primary_activations(activations):
    torch.manual_seed(0)
    model = capslab.build_model({**TINY_CAPSNET, "activations": activations}, capslab.DataInfo(1, 28, 28, 10), "em")
    seen = {}
    model.caps.routing.register_forward_hook(lambda m, args, out: seen.update(args=args))
    x = torch.rand(3, 1, 28, 28)
    model(x)
    votes, acts, poses = seen["args"]
    u, a = model.primary(model.conv1(x).relu())
    torch.testing.assert_close(poses, u)
    torch.testing.assert_close(acts, a)
    if activations == "length":
        torch.testing.assert_close(acts, u.norm(dim=-1))
    else:  # the learned head: one logistic unit per capsule type and position, not the pose length
        assert not torch.allclose(acts, u.norm(dim=-1)) and ((acts > 0) & (acts < 1)).all()
        assert model.primary.head is not None


@pytest.mark.parametrize("bad", ["poses", "activations"])
def test_a_result_of_the_wrong_shape_is_one_error_naming_the_routing(bad):
    class Transposed(capslab.Routing):
        name = "transposed"

        def route(self, votes, activations, poses, iterations, diagnostics):
            v = votes.mean(1)  # (B, J, D)
            a = v.norm(dim=-1)  # (B, J)
            if bad == "poses":
                return capslab.RoutingResult(v.transpose(1, 2), a)  # (B, D, J)
            return capslab.RoutingResult(v, a.unsqueeze(-1))  # (B, J, 1)

    r = Transposed(SPEC).double()
    votes, acts, poses, *_ = inputs()
    with pytest.raises(capslab.CapslabError, match=f"routing 'transposed' returned {bad} of shape"):
        r(votes, acts, poses)
