"""Self-attention routing (Mazzia et al. 2021) against a loop transcription of its equations and against
the direct (B, J, I, I) form; the Efficient-CapsNet model. Slow: one epoch of the self_attention recipe."""

import math
from pathlib import Path

import pytest
import torch
from helpers import train_recipe

import capslab
from capslab.testing import routing_inputs

ROOT = Path(__file__).resolve().parents[1]
SPEC = capslab.RoutingSpec(in_caps=5, out_caps=3, pose_dim=4)
B, I, J, D = 2, 5, 3, 4
MNIST = capslab.DataInfo(1, 28, 28, 10)


def self_attention_reference(u, prior):
    """u [b][i][j][d], prior [i][j] -> v [b][j][d] with the efficient squash, one scalar at a time."""
    out = []
    for b in range(len(u)):
        logits = [[0.0] * J for _ in range(I)]
        for j in range(J):
            for i in range(I):
                # sum_k A_j[i, k], A_j = U_j U_j^T / sqrt(D)
                A_row = [sum(u[b][i][j][d] * u[b][k][j][d] for d in range(D)) / math.sqrt(D) for k in range(I)]
                logits[i][j] = sum(A_row)
        c = [[math.exp(logits[i][j]) / sum(math.exp(x) for x in logits[i]) for j in range(J)] for i in range(I)]
        v = []
        for j in range(J):
            s = [sum(u[b][i][j][d] * (c[i][j] + prior[i][j]) for i in range(I)) for d in range(D)]
            norm = math.sqrt(sum(x * x for x in s))
            v.append([(1 - math.exp(-norm)) * x / norm for x in s])
        out.append(v)
    return torch.tensor(out, dtype=torch.float64)


def make_routing(seed=0):
    torch.manual_seed(seed)
    routing = capslab.build_routing("self_attention", SPEC, capslab.build_squash({"name": "efficient", "eps": 1e-30}))
    routing = routing.double()
    with torch.no_grad():
        routing.prior.copy_(torch.randn(I, J, dtype=torch.float64) * 0.3)  # trained log-prior, not the zero init
    return routing


def test_self_attention_matches_loop_transcription():
    routing = make_routing()
    votes, _, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64, scale=1.0)
    out = routing(votes, diagnostics=True)
    expected = self_attention_reference(votes.tolist(), routing.prior.tolist())
    torch.testing.assert_close(out.poses, expected)
    torch.testing.assert_close(out.activations, expected.norm(dim=-1))


def test_self_attention_equals_the_direct_agreement_matrices():
    routing = make_routing()
    votes, _, _ = routing_inputs(SPEC, batch=B, dtype=torch.float64, scale=1.0)
    u = votes.permute(0, 2, 1, 3)  # (B, J, I, D)
    A = u @ u.transpose(-1, -2) / math.sqrt(D)  # (B, J, I, I), materialised
    c = A.sum(-1).softmax(1)  # (B, J, I), over the outputs
    s = ((c + routing.prior.t()).unsqueeze(-1) * u).sum(2)  # (B, J, D)
    out = routing(votes, diagnostics=True)
    torch.testing.assert_close(out.poses, routing.squash(s))
    torch.testing.assert_close(out.coupling, c.transpose(1, 2))
    torch.testing.assert_close(out.coupling.sum(-1), torch.ones(B, I, dtype=torch.float64))
    assert out.logit_change.shape == (1,) and out.entropy.shape == (1,)
    assert out.logit_change.item() == pytest.approx(A.sum(-1).abs().mean().item())


def test_self_attention_prior_starts_at_zero_and_learns():
    torch.manual_seed(0)
    routing = capslab.build_routing("self_attention", SPEC)
    assert routing.prior.shape == (I, J) and (routing.prior == 0).all()
    votes, _, _ = routing_inputs(SPEC, batch=B)
    out = routing(votes.requires_grad_(), iterations=5)  # iterations are ignored: one pass
    torch.testing.assert_close(out.poses, routing(votes).poses)
    out.activations.sum().backward()
    assert routing.prior.grad.abs().min() > 0 and votes.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- efficient_capsnet
def build(**params):
    torch.manual_seed(0)
    return capslab.build_model({"name": "efficient_capsnet", **params}, MNIST, "self_attention", "efficient")


def test_efficient_capsnet_has_the_papers_161k_parameters():
    model = build()
    n = model.num_parameters(include_decoder=False)
    assert abs(n - 161_000) / 161_000 < 0.02, n
    assert model.num_parameters() - n == 160 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 784 + 784  # the decoder
    assert build(decoder=False).decoder is None


def test_efficient_capsnet_forward_backward():
    model = build()
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([1, 4])
    out = model(x, y, diagnostics=True)
    assert out.scores.shape == (2, 10) and out.poses.shape == (2, 10, 16) and out.reconstruction.shape == x.shape
    assert ((out.scores >= 0) & (out.scores < 1)).all()
    assert out.routing.coupling.shape == (2, 16, 10)
    recon = capslab.reconstruction_loss(out.reconstruction, x, 0.392, "mean")
    loss = capslab.build_loss("margin")(out.scores, y) + recon
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        single = model(x[:1]).scores
    torch.testing.assert_close(single, model(x).scores[:1].detach())  # BatchNorm in eval: per example


def test_efficient_capsnet_primary_capsules_group_channels():
    model = build(decoder=False)
    captured = {}
    model.caps.register_forward_pre_hook(lambda module, args: captured.setdefault("u", args[0]))
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        model(x)
        conv = model.primary(model.features(x))  # (B, 128, 1, 1)
    assert conv.shape == (2, 128, 1, 1)
    torch.testing.assert_close(captured["u"][1, 3], model.squash(conv[1, 24:32, 0, 0]))  # capsule 3 = channels 24..31


def test_efficient_capsnet_rejects_mismatched_primary_capsules():
    with pytest.raises(capslab.CapslabError, match="primary_caps"):
        build(primary_caps=10)


@pytest.mark.slow
def test_self_attention_recipe_one_epoch_of_mnist5k(tmp_path):
    losses, record = train_recipe(ROOT / "recipes/routing/self_attention.yaml", tmp_path, ["train.epochs=1"])
    assert losses[-1] < 0.7 * losses[0], losses
    assert record["test_accuracy"] > 0.7, record  # chance: 0.1; seen: 0.94 after one epoch
