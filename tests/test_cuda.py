"""On a GPU (marker ``cuda``; skipped cleanly without one): every routing's conformance checks on CUDA tensors,
the fused agreement loop against the reference, and two training steps of CapsNet per routing. On the CPU,
the path CUDA takes (the fused operator loop on votes stored (I, B, J, D)) is forced by
``backends.use("fused")`` and checked by tests/test_backends.py and tests/test_fast_routing.py."""

import pytest
import torch

import capslab
from capslab.routing import backends

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
ROUTINGS = sorted(e.name for e in capslab.registry("routing") if e.builtin)
DEV = torch.device("cuda")


@pytest.mark.parametrize("name", ROUTINGS)
def test_routing_on_cuda_matches_the_cpu(name):
    spec = capslab.RoutingSpec(in_caps=64, out_caps=10, pose_dim=16, in_pose_dim=8)
    torch.manual_seed(0)
    routing = capslab.build_routing(name, spec).double().eval()
    layer = capslab.ClassCapsules(64, 8, 10, 16, routing).double()
    x, a = torch.randn(4, 64, 8, dtype=torch.float64) * 0.3, torch.rand(4, 64, dtype=torch.float64)
    torch.manual_seed(1)
    with backends.use("reference"):
        want = layer(x, a)
    layer = layer.to(DEV)
    torch.manual_seed(1)
    got = layer(x.to(DEV), a.to(DEV))
    if not routing.stochastic:
        torch.testing.assert_close(got.poses.cpu(), want.poses)
    if name in ("dynamic", "max_min", "uniform", "random"):
        assert backends.votes_layout(routing, x.to(DEV)) is backends.VotesLayout.IBJD  # CUDA takes the fused loop


@pytest.mark.parametrize("name", ROUTINGS)
def test_two_training_steps_on_cuda(name):
    torch.manual_seed(0)
    model = capslab.build_model(
        {"name": "capsnet", "conv_channels": 32, "primary_types": 8}, capslab.DataInfo(1, 28, 28, 10), name
    ).to(DEV)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = capslab.build_loss("margin")
    x, y = torch.rand(8, 1, 28, 28, device=DEV), torch.randint(0, 10, (8,), device=DEV)
    for _ in range(2):
        out = model(x, y)
        loss = loss_fn(out.scores, y) + capslab.reconstruction_loss(out.reconstruction, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


def test_bf16_autocast_step_on_cuda():
    torch.manual_seed(0)
    model = capslab.build_model("capsnet", capslab.DataInfo(1, 28, 28, 10)).to(DEV)
    x, y = torch.rand(16, 1, 28, 28, device=DEV), torch.randint(0, 10, (16,), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, y)
    loss = capslab.build_loss("margin")(out.scores.float(), y)
    loss.backward()
    assert torch.isfinite(loss) and model.caps.weight.grad is not None
