"""capslab.Conv2d: the GEMM weight gradient equals nn.Conv2d's (and a float64 reference) within float
tolerance, for CapsNet's two convolution shapes and odd batch splits; the fast path steps aside where it does
not apply."""

import pytest
import torch
from torch import nn

import capslab
from capslab.layers import conv
from capslab.routing import backends


def grads(module, x, g):
    x = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(g)
    return y, x.grad, module.weight.grad, module.bias.grad


@pytest.mark.parametrize(
    "shape",
    [(1, 16, 28, 9, 1, 5), (8, 32, 20, 9, 2, 7), (3, 4, 11, 3, 2, 3)],
    ids=["conv1-like", "primary-like", "small"],
)
def test_gemm_weight_gradient_equals_conv2d(shape, monkeypatch):
    C, O, H, k, s, B = shape
    monkeypatch.setattr(conv, "PATCH_BYTES", 4000)  # several chunks, the last one partial
    torch.manual_seed(0)
    ref, fast = nn.Conv2d(C, O, k, s), capslab.Conv2d(C, O, k, s)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(B, C, H, H)
    assert fast.fast(x.requires_grad_())
    g = torch.randn(ref(x).shape)
    x64, w64 = x.detach().double().requires_grad_(), ref.weight.detach().double().requires_grad_()
    nn.functional.conv2d(x64, w64, ref.bias.detach().double(), s).backward(g.double())
    for a, b in zip(grads(ref, x.detach(), g), grads(fast, x.detach(), g), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * float(a.detach().abs().max()))
    fast_w = fast.weight.grad.double()
    assert float((fast_w - w64.grad).abs().max()) <= 1e-5 * float(w64.grad.abs().max())


def test_fast_path_only_where_it_applies():
    m = capslab.Conv2d(2, 4, 3)
    x = torch.randn(1, 2, 5, 5)
    assert m.fast(x)
    with backends.use("reference"):
        assert not m.fast(x)  # the one switch for debugging turns it off
    with torch.no_grad():
        assert not m.fast(x)
    assert not m.fast(x.double()) and not capslab.Conv2d(2, 4, 3, padding=1).fast(x)
    assert not capslab.Conv2d(2, 4, 3, stride=(1, 2)).fast(x)
    assert not m.fast(torch.randn(2, 2, 5, 5).to(memory_format=torch.channels_last))  # not NCHW: no patch copy
    assert set(m.state_dict()) == set(nn.Conv2d(2, 4, 3).state_dict())  # checkpoints unchanged
