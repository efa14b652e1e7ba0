"""Dynamic routing against a plain loop transcription of Procedure 1 (Sabour 2017), and its options."""

import pytest
import torch

import capslab
from capslab.testing import routing_inputs

SPEC = capslab.RoutingSpec(in_caps=5, out_caps=3, pose_dim=4)


def squash(s):
    n2 = sum(x * x for x in s)
    n = (n2 + 1e-7) ** 0.5
    return [x * n / (1 + n2) for x in s]


def procedure_1(u_hat, r, bias=None, leaky=False):
    """Procedure 1, element by element: u_hat[b][i][j][d] nested lists of floats."""
    B, I, J, D = len(u_hat), len(u_hat[0]), len(u_hat[0][0]), len(u_hat[0][0][0])
    V = []
    for b in range(B):
        logits = [[0.0] * J for _ in range(I)]
        for _ in range(r):
            c = []
            for i in range(I):
                row = ([0.0] if leaky else []) + logits[i]
                e = [torch.tensor(x, dtype=torch.float64).exp().item() for x in row]
                c.append([x / sum(e) for x in e][1 if leaky else 0 :])
            v = []
            for j in range(J):
                s = [
                    sum(c[i][j] * u_hat[b][i][j][d] for i in range(I)) + (bias[j][d] if bias else 0.0) for d in range(D)
                ]
                v.append(squash(s))
            for i in range(I):
                for j in range(J):
                    logits[i][j] += sum(u_hat[b][i][j][d] * v[j][d] for d in range(D))
        V.append(v)
    return torch.tensor(V, dtype=torch.float64)


@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("leaky", [False, True])
def test_matches_plain_procedure_1(iterations, leaky):
    votes, _, _ = routing_inputs(SPEC, batch=2, dtype=torch.float64, scale=1.0)
    r = capslab.build_routing(
        {"name": "dynamic", "iterations": iterations, "bias": False, "leaky": leaky}, SPEC
    ).double()
    out = r(votes)
    expected = procedure_1(votes.tolist(), iterations, leaky=leaky)
    torch.testing.assert_close(out.poses, expected)
    torch.testing.assert_close(out.activations, expected.norm(dim=-1))


def test_bias_is_added_to_s_before_the_squash():
    votes, _, _ = routing_inputs(SPEC, batch=2, dtype=torch.float64)
    r = capslab.build_routing({"name": "dynamic", "bias_init": 0.3}, SPEC).double()
    torch.testing.assert_close(r(votes).poses, procedure_1(votes.tolist(), 3, bias=[[0.3] * 4] * 3))


def test_couplings_sum_to_one_over_the_output_capsules():
    votes, _, _ = routing_inputs(SPEC, batch=2)
    c = capslab.build_routing("dynamic", SPEC)(votes, diagnostics=True).coupling  # (B, I, J)
    torch.testing.assert_close(c.sum(-1), torch.ones(2, SPEC.in_caps))
    assert not torch.allclose(c.sum(1), torch.ones(2, SPEC.out_caps))  # not a softmax over the inputs


def test_routing_is_per_example():
    votes, _, _ = routing_inputs(SPEC, batch=2, scale=2.0)
    r = capslab.build_routing("dynamic", SPEC)
    c = r(votes, diagnostics=True).coupling
    assert not torch.allclose(c[0], c[1], atol=1e-3), "two different examples got the same couplings"
    torch.testing.assert_close(r(votes[1:], diagnostics=True).coupling[0], c[1])


def test_first_iteration_is_uniform_and_logit_change_is_reported_per_iteration():
    votes, _, _ = routing_inputs(SPEC, batch=2)
    out = capslab.build_routing({"name": "dynamic", "iterations": 4}, SPEC)(votes, diagnostics=True)
    assert out.logit_change.shape == (4,) and out.entropy.shape == (4,)
    torch.testing.assert_close(out.entropy[0], torch.tensor(SPEC.out_caps).log().float())
    assert (out.entropy[1:] < out.entropy[0]).all(), "agreement must sharpen the couplings"


def test_gradient_policy_detach_inner_only_changes_gradients():
    votes, _, _ = routing_inputs(SPEC, batch=2)
    grads = {}
    for policy in ("all", "detach_inner"):
        v = votes.clone().requires_grad_()
        out = capslab.build_routing({"name": "dynamic", "gradient": policy}, SPEC)(v)
        out.activations.sum().backward()
        grads[policy] = (out.poses.detach(), v.grad)
    torch.testing.assert_close(grads["all"][0], grads["detach_inner"][0])
    assert not torch.allclose(grads["all"][1], grads["detach_inner"][1])


def test_unknown_option_is_rejected():
    with pytest.raises(Exception, match="iteratons"):
        capslab.build_routing({"name": "dynamic", "iteratons": 2}, SPEC)
