"""EM routing (Hinton, Sabour, Frosst 2018) against a loop transcription of the paper's equations, the
matrix-capsule model (votes against loops, parameter count, forward/backward) and the spread loss.
Slow: no NaN in 2,000 steps on mnist5k, and one epoch of the em recipe."""

import math
from pathlib import Path

import pytest
import torch
from helpers import train_recipe

import capslab
from capslab.testing import routing_inputs
from capslab_plugins.models.matrix_capsnet import ConvCapsules

ROOT = Path(__file__).resolve().parents[1]
SPEC = capslab.RoutingSpec(in_caps=5, out_caps=3, pose_dim=16)
B, I, J, D = 2, 5, 3, 16


def em_reference(
    V,
    a,
    beta_a,
    beta_u,
    iterations,
    final_lambda=0.01,
    schedule="official",
    min_var=5e-4,
    mass_eps=1e-5,
    mu_momentum=0.0,
    beta_a_scale=1.0,
):
    """The paper's procedure, one scalar at a time; R in the probability domain (no log-sum-exp).

    V: [b][i][j][h], a: [b][i]. Returns mu [b][j][h], activations [b][j], the R of the last M-step [b][i][j].
    """
    mus, acts, Rs = [], [], []
    for b in range(len(V)):
        R = [[1.0 / J] * J for _ in range(I)]
        mu = [[0.0] * D for _ in range(J)]
        for t in range(iterations):
            lam = final_lambda * (1 - 0.95 ** (t + 1)) if schedule == "official" else final_lambda
            sigma2, act = [[0.0] * D for _ in range(J)], [0.0] * J
            for j in range(J):  # M-step
                Rp = [R[i][j] * a[b][i] for i in range(I)]
                mass = sum(Rp) + mass_eps
                for h in range(D):
                    new = sum(Rp[i] * V[b][i][j][h] for i in range(I)) / mass
                    mu[j][h] = (1 - mu_momentum) * new + mu_momentum * mu[j][h]
                    sigma2[j][h] = sum(Rp[i] * (V[b][i][j][h] - mu[j][h]) ** 2 for i in range(I)) / mass + min_var
                cost = sum((beta_u[j] + math.log(math.sqrt(sigma2[j][h]))) * mass for h in range(D))
                act[j] = 1 / (1 + math.exp(-lam * (beta_a_scale * beta_a[j] - cost)))
            if t < iterations - 1:  # E-step
                for i in range(I):
                    p = []
                    for j in range(J):
                        density = 1.0
                        for h in range(D):
                            density *= math.exp(-((V[b][i][j][h] - mu[j][h]) ** 2) / (2 * sigma2[j][h])) / math.sqrt(
                                2 * math.pi * sigma2[j][h]
                            )
                        p.append(act[j] * density)
                    R[i] = [pj / sum(p) for pj in p]
        mus.append([row[:] for row in mu])
        acts.append(act)
        Rs.append([row[:] for row in R])
    return tuple(torch.tensor(x, dtype=torch.float64) for x in (mus, acts, Rs))


def make_em(seed=0, **params):
    """EM on the votes as they come (``vote_scale: raw``), so the loop transcription applies directly."""
    torch.manual_seed(seed)
    routing = capslab.build_routing({"name": "em", "vote_scale": "raw", **params}, SPEC).double()
    with torch.no_grad():  # non-trivial betas, so the test sees both used
        routing.beta_a.copy_(torch.randn(J, dtype=torch.float64))
        routing.beta_u.copy_(torch.randn(J, dtype=torch.float64) * 0.5)
    return routing


CONFIGS = [
    {},
    {"iterations": 1},
    {"iterations": 4, "lambda_schedule": "constant", "final_lambda": 0.05},
    {"mu_momentum": 0.1, "beta_a_scale": 5000.0, "min_var": 1e-3},  # the official options
]


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
def test_em_matches_loop_transcription(params):
    routing = make_em(**params)
    if params.get("beta_a_scale"):
        with torch.no_grad():
            routing.beta_a.mul_(1e-2)  # keep lambda * 5000 * beta_a in the logistic's live range
    votes, acts, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64)
    out = routing(votes, acts, diagnostics=True)
    ref_kwargs = {k: v for k, v in params.items() if k != "lambda_schedule"}
    ref_kwargs["schedule"] = params.get("lambda_schedule", "official")
    mu, act, R = em_reference(
        votes.tolist(),
        acts.tolist(),
        routing.beta_a.tolist(),
        routing.beta_u.tolist(),
        **{"iterations": 3, **ref_kwargs},
    )
    torch.testing.assert_close(out.poses, mu)
    torch.testing.assert_close(out.activations, act)
    torch.testing.assert_close(out.coupling, R)
    assert not torch.allclose(act, act.mean()), "activations should differ between outputs"


@pytest.mark.parametrize("scale", [1e-3, 1.0, 50.0])
def test_em_rms_vote_scale_is_the_transcription_on_unit_rms_votes(scale):
    routing = make_em(vote_scale="rms")
    votes, acts, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64, scale=scale)
    out = routing(votes, acts)
    s = votes.square().mean((1, 2, 3), keepdim=True).sqrt()  # (B, 1, 1, 1)
    mu, act, _ = em_reference((votes / s).tolist(), acts.tolist(), routing.beta_a.tolist(), routing.beta_u.tolist(), 3)
    torch.testing.assert_close(out.poses, mu * s.view(B, 1, 1))  # poses back at the votes' scale
    torch.testing.assert_close(out.activations, act)


def test_em_official_preset_fills_unset_keys_only():
    p = capslab.build_routing({"name": "em", "preset": "official", "min_var": 1e-3}, SPEC).params
    assert (p.mu_momentum, p.beta_a_scale, p.cost, p.class_lambda_factor) == (0.1, 5000.0, "log_variance", 0.25)
    assert p.min_var == 1e-3  # set beside the preset: wins
    class_layer = capslab.build_routing({"name": "em", "preset": "official"}, SPEC)
    hidden = capslab.build_routing({"name": "em", "preset": "official"}, capslab.RoutingSpec(5, 3, 16, layer="hidden"))
    assert class_layer.inverse_temperature(2) == pytest.approx(hidden.inverse_temperature(2) / 4)


def test_em_official_cost_uses_the_log_variance():
    votes, acts, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64)
    half = make_em(iterations=1)(votes, acts).activations
    full = make_em(iterations=1, cost="log_variance")(votes, acts).activations
    r = make_em(iterations=1)
    lam = r.inverse_temperature(0)
    mass = (acts / J).sum(1, keepdim=True) + 1e-5  # (B, 1): R = 1/J on the one M-step
    # logit = lam (beta_a - D beta_u mass - k mass sum_h log var_h), k = 1/2 (log sigma) or 1 (log variance)
    expected = 2 * torch.logit(half) - lam * r.beta_a + lam * D * r.beta_u * mass
    torch.testing.assert_close(torch.logit(full), expected)


def test_em_diagnostics_track_the_iterations():
    routing = make_em(iterations=3)
    votes, acts, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64)
    out = routing(votes, acts, diagnostics=True)
    assert out.logit_change.shape == (3,) and out.entropy.shape == (3,)
    assert out.entropy[0].item() == pytest.approx(math.log(J))  # R starts uniform
    assert (out.entropy[1:] < math.log(J)).all()
    assert (out.logit_change > 0).all()
    torch.testing.assert_close(out.coupling.sum(-1), torch.ones(B, I, dtype=torch.float64))  # R normalised over j
    plain = routing(votes, acts)
    torch.testing.assert_close(plain.poses, out.poses)
    torch.testing.assert_close(plain.activations, out.activations)


def test_em_inverse_temperature_schedule():
    routing = capslab.build_routing("em", SPEC)
    lambdas = [routing.inverse_temperature(t) for t in range(3)]
    assert lambdas == pytest.approx([0.01 * 0.05, 0.01 * 0.0975, 0.01 * 0.142625])
    constant = capslab.build_routing({"name": "em", "lambda_schedule": "constant", "final_lambda": 0.02}, SPEC)
    assert constant.inverse_temperature(5) == 0.02


def test_em_log_domain_survives_vanishing_densities():
    # votes of output 0 far from everything else: the densities underflow to 0 in the probability domain
    votes, acts, _ = routing_inputs(SPEC, batch=B, dtype=torch.float32, scale=0.01)
    votes[:, :, 0] += torch.linspace(-300, 300, I)[None, :, None]
    out = make_em().float()(votes, acts, diagnostics=True)
    for t in (out.poses, out.activations, out.coupling, out.logit_change):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(out.coupling.sum(-1), torch.ones(B, I))


def test_em_uses_and_learns_its_betas():
    routing = make_em()
    votes, acts, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64)
    out = routing(votes.requires_grad_(), acts)
    out.activations.sum().backward()
    assert routing.beta_a.grad.abs().min() > 0 and routing.beta_u.grad.abs().min() > 0
    assert votes.grad.abs().sum() > 0
    assert routing.needs_activations
    with pytest.raises(capslab.CapslabError, match="routing 'em' needs the input capsules' activations"):
        routing(votes.detach())  # never a silent a_i = 1


# ------------------------------------------------------------------------------- matrix_capsnet
class Recorder(capslab.Routing):
    """Stands in for a routing: keeps the votes and activations it was handed."""

    name = "recorder"

    def route(self, votes, activations, poses, iterations, diagnostics):
        self.seen = (votes, activations)
        Bn, _, Jn, Dn = votes.shape
        return capslab.RoutingResult(votes.new_zeros(Bn, Jn, Dn), votes.new_full((Bn, Jn), 0.5))


def test_conv_capsule_votes_match_loops():
    T_in, T_out, k, s, H = 2, 3, 3, 2, 7
    torch.manual_seed(0)
    layer = ConvCapsules(T_in, T_out, k, s, (H, H), Recorder, init_std=0.5)
    pose, act = torch.randn(2, T_in * 16, H, H), torch.rand(2, T_in, H, H)
    out_pose, out_act = layer(pose, act)
    windows = layer.routing.spec.windows  # which real input capsule each windowed one is
    assert windows.num_inputs == T_in * H * H
    torch.testing.assert_close(layer.routing.seen[1], act.flatten(1)[:, windows.index].flatten(0, 1))
    Ho = (H - k) // s + 1
    assert out_pose.shape == (2, T_out * 16, Ho, Ho) and out_act.shape == (2, T_out, Ho, Ho)
    votes, a = layer.routing.seen  # (B * Ho * Ho, T_in * k * k, T_out, 16), (B * Ho * Ho, T_in * k * k)
    for b in range(2):
        for y in range(Ho):
            for x in range(Ho):
                n = (b * Ho + y) * Ho + x
                for t in range(T_in):
                    for ky in range(k):
                        for kx in range(k):
                            i = t * k * k + ky * k + kx
                            M = pose[b, t * 16 : (t + 1) * 16, y * s + ky, x * s + kx].view(4, 4)
                            assert a[n, i] == act[b, t, y * s + ky, x * s + kx]
                            for j in range(T_out):
                                torch.testing.assert_close(votes[n, i, j], (M @ layer.weight[i, j]).flatten())


def brute_force_input_softmax(logits, windows):
    """logits (B * L, J, I): softmax over every (window, output) pair of each real input, one input at a time."""
    B = logits.shape[0] // windows.positions
    x = logits.reshape(B, windows.positions, *logits.shape[1:])  # (B, L, J, I)
    out = torch.empty_like(x)
    for b in range(B):
        for n in range(windows.num_inputs):
            where = (windows.index == n).nonzero().tolist()  # [(l, i), ...]
            if not where:
                continue
            vals = torch.cat([x[b, l, :, i] for l, i in where])  # every window and output
            total = vals.exp().sum()
            for l, i in where:
                out[b, l, :, i] = (x[b, l, :, i].exp() / total).log()
    return out.reshape_as(logits)


def test_conv_windows_normalise_each_input_over_every_window():
    windows = capslab.ConvWindows.grid(types=2, height=5, width=6, kernel=3, stride=1)  # heavy overlap
    assert windows.index.shape == (3 * 4, 2 * 9)
    corner, centre = 0, 2 * 6 + 2  # (0, 0) is in one window, (2, 2) in nine (type 0)
    assert (windows.index == corner).sum() == 1 and (windows.index == centre).sum() == 9
    logits = torch.randn(2 * 12, 4, 18, dtype=torch.float64) * 3
    log_r = windows.log_softmax(logits)
    torch.testing.assert_close(log_r, brute_force_input_softmax(logits, windows))
    mass = torch.zeros(2, windows.num_inputs, dtype=torch.float64)  # each real input's R over all its parents
    mass.scatter_add_(
        1, windows.index[None, :, None, :].expand(2, 12, 4, 18).reshape(2, -1), log_r.exp().reshape(2, -1)
    )
    torch.testing.assert_close(mass, torch.ones_like(mass))
    torch.testing.assert_close(windows.log_softmax(logits + 1e4), log_r)  # shift-invariant: no overflow
    assert torch.autograd.gradcheck(windows.log_softmax, logits[:12, :2, :].clone().requires_grad_())


def test_em_official_assignments_span_the_windows():
    windows = capslab.ConvWindows.grid(types=2, height=5, width=5, kernel=3, stride=1)
    spec = capslab.RoutingSpec(18, 3, 16, layer="hidden", windows=windows)
    torch.manual_seed(0)
    routing = capslab.build_routing({"name": "em", "preset": "official", "vote_scale": "raw"}, spec)
    votes, acts = torch.randn(2 * 9, 18, 3, 16, dtype=torch.float64), torch.rand(2 * 9, 18, dtype=torch.float64)
    routing = routing.double()
    out = routing(votes, acts, diagnostics=True)
    R = out.coupling.transpose(1, 2)  # (B * L, J, I)
    mass = torch.zeros(2, windows.num_inputs, dtype=torch.float64).scatter_add_(
        1, windows.index[None, :, None, :].expand(2, 9, 3, 18).reshape(2, -1), R.reshape(2, -1)
    )
    torch.testing.assert_close(mass, torch.ones_like(mass))  # each input's R sums to one over all its parents
    per_window = capslab.build_routing(
        {"name": "em", "preset": "official", "vote_scale": "raw", "assignment": "window"}, spec
    ).double()
    per_window.load_state_dict(routing.state_dict())
    window_out = per_window(votes, acts, diagnostics=True)
    torch.testing.assert_close(window_out.coupling.sum(-1), torch.ones(18, 18, dtype=torch.float64))
    assert (window_out.poses - out.poses).abs().max() > 1e-3  # the two normalisations route differently
    plain = capslab.RoutingSpec(18, 3, 16)
    both = [
        capslab.build_routing({"name": "em", "preset": "official", "assignment": a}, plain).double()(votes, acts)
        for a in ("input", "window")
    ]
    torch.testing.assert_close(both[0].poses, both[1].poses)  # without windows "input" is the plain softmax


def tiny_model(routing="em", **params):
    torch.manual_seed(0)
    section = {"name": "matrix_capsnet", "channels": 8, "types": [2, 3, 4], **params}
    return capslab.build_model(section, capslab.DataInfo(1, 28, 28, 10), routing)


def test_class_votes_share_weights_and_add_coordinates():
    model = tiny_model()
    h, w = model.grid
    Dt = model.class_weight.shape[0]
    pose = torch.randn(2, Dt * 16, h, w)
    votes, _ = model.class_votes(pose)  # (B, Dt * h * w, J, 16)
    assert votes.shape == (2, Dt * h * w, 10, 16)
    for b in range(2):
        for d in range(Dt):
            for y in range(h):
                for x in range(w):
                    i = (d * h + y) * w + x
                    M = pose[b, d * 16 : (d + 1) * 16, y, x].view(4, 4)
                    for j in range(10):
                        expected = (M @ model.class_weight[d, j]).flatten()
                        expected[3] += (y + 0.5) / h  # the scaled row of the position, right-hand column
                        expected[7] += (x + 0.5) / w
                        torch.testing.assert_close(votes[b, i, j], expected)
    plain = tiny_model(coordinate_addition=False)
    plain.load_state_dict(model.state_dict())
    diff = votes - plain.class_votes(pose)[0]
    others = [h for h in range(16) if h not in (3, 7)]
    assert diff[..., [3, 7]].abs().min() > 0 and diff[..., others].abs().max() == 0


def test_matrix_capsnet_forward_backward_at_batch_2():
    torch.manual_seed(0)
    model = capslab.build_model("matrix_capsnet", capslab.DataInfo(1, 28, 28, 10), "em")  # the paper's size
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 7])
    out = model(x, y, diagnostics=True)
    assert out.scores.shape == (2, 10) and out.poses.shape == (2, 10, 16)
    assert ((out.scores > 0) & (out.scores < 1)).all()
    assert out.routing.coupling.shape == (2, 32 * 3 * 3, 10) and out.routing.entropy.shape == (3,)
    capslab.build_loss("spread")(out.scores, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.conv1.weight.grad.abs().sum() > 0 and model.class_routing.beta_a.grad.abs().sum() > 0


def test_matrix_capsnet_parameter_count_and_width():
    # the paper: A = B = C = D = 32 on smallNORB (5 classes, 32x32 crops): "310K" parameters
    paper = capslab.build_model("matrix_capsnet", capslab.DataInfo(1, 32, 32, 5), "em")
    assert abs(paper.num_parameters() - 310_000) / 310_000 < 0.03, paper.num_parameters()
    small = capslab.build_model({"name": "matrix_capsnet", "width": 0.25}, capslab.DataInfo(1, 28, 28, 10), "em")
    assert small.conv1.out_channels == 8 and small.primary_types == 8
    assert [layer.types_out for layer in small.conv_caps] == [8, 8]


def test_matrix_capsnet_works_with_a_vector_routing():
    out = tiny_model("dynamic")(torch.rand(2, 1, 28, 28))
    assert out.scores.shape == (2, 10) and torch.isfinite(out.scores).all()


@pytest.mark.parametrize("params", [{"types": [8, 8]}, {"caps_kernels": [3]}])
def test_matrix_capsnet_rejects_bad_shapes(params):
    with pytest.raises(capslab.CapslabError, match="matrix_capsnet"):
        tiny_model(**params)
    with pytest.raises(capslab.CapslabError, match="too small"):
        capslab.build_model("matrix_capsnet", capslab.DataInfo(1, 12, 12, 10), "em")


# ------------------------------------------------------------------------------- spread loss
def test_spread_loss_matches_its_formula_and_the_official_schedule():
    official = capslab.build_loss({"name": "spread", "m_max": 0.99, "class_reduction": "mean"})
    for step in (0, 50_000, 200_000, 10**7):
        z = min(10.0, step / 50000 - 4)
        assert official.margin(step) == pytest.approx(0.2 + 0.79 / (1 + math.exp(-z)))
    scores = torch.tensor([[0.9, 0.2, 0.85, 0.1], [0.3, 0.6, 0.5, 0.55]])
    y = torch.tensor([0, 1])
    m = official.margin(100_000)
    per_example = [
        sum(max(0.0, m - (row[t] - row[i])) ** 2 for i in range(4) if i != t)
        for row, t in zip(scores.tolist(), y.tolist())
    ]
    expected_sum = sum(per_example) / 2
    paper = capslab.build_loss({"name": "spread", "m_max": 0.99})
    assert paper(scores, y, step=100_000).item() == pytest.approx(expected_sum)
    assert official(scores, y, step=100_000).item() == pytest.approx(expected_sum / 4)


# ------------------------------------------------------------------------------- slow
def load_split(split):
    data = capslab.build_dataset("mnist5k").load(split)
    return data.images.float() / 255, data.labels


@pytest.mark.slow
def test_em_no_nan_in_2000_steps_of_mnist5k():
    torch.manual_seed(0)
    x, y = load_split("train")
    model = tiny_model(channels=16, types=[4, 4, 4])
    loss_fn = capslab.build_loss({"name": "spread", "ramp_steps": 250})  # the margin reaches 0.9 by the end
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # the official learning rate, no decay
    step = 0
    while step < 2000:
        for idx in torch.randperm(len(y)).split(32):
            out = model(x[idx], y[idx])
            loss = loss_fn(out.scores, y[idx], step=step)
            assert torch.isfinite(loss), f"non-finite loss at step {step}"
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 2000:
                break
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
    with torch.no_grad():
        assert torch.isfinite(model(x[:500]).scores).all()


@pytest.mark.slow
def test_em_recipe_one_epoch_of_mnist5k(tmp_path):
    losses, record = train_recipe(ROOT / "recipes/routing/em.yaml", tmp_path, ["train.epochs=1"])
    assert losses[-1] < 0.8 * losses[0], losses
    assert record["test_accuracy"] > 0.3, record  # chance: 0.1; seen: 0.525 after one epoch (recipe header)
