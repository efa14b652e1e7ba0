"""``capslab.Conv2d``: ``nn.Conv2d`` whose weight gradient is one matrix product over unfolded patches.

Why: CapsNet's two convolutions have shapes oneDNN's backward-weights kernels handle poorly on CPUs: Conv1
has one input channel (28x28 -> 20x20, 9x9), PrimaryCaps a 9x9 kernel at stride 2 onto a 6x6 map. Their
weight gradient is dW = dY (O, B*L) @ patches (B*L, C*k*k), one GEMM at the matmul rate; the patches are a
strided view of the input, copied a few examples at a time so the extra memory stays small. Forward and
input gradient stay oneDNN's. Measured effect: docs/performance.md.

The fast path runs on contiguous (NCHW) CPU float32 tensors with no padding, dilation or groups and equal
strides, outside torch.compile, and when capslab.routing.backends allows fast paths
(``CAPSLAB_ROUTING_BACKEND=reference`` or ``train.routing_backend=reference`` turn it off); anything else
is ``nn.Conv2d``'s own forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capslab.routing import backends

PATCH_BYTES = 16 * 2**20  # unfolded patches copied at a time for the weight gradient


def gemm_weight_grad(x: Tensor, grad_out: Tensor, kernel: int, stride: int) -> Tensor:
    """dL/dW (O, C*k*k) of a convolution of x (B, C, H, W) with output gradient grad_out (B, O, H', W')."""
    B, C, H, W = x.shape
    O, oh, ow = grad_out.shape[1:]
    x = x.contiguous()
    row = C * kernel * kernel
    chunk = max(1, PATCH_BYTES // (x.element_size() * oh * ow * row))
    grad_w = x.new_zeros(O, row)
    for start in range(0, B, chunk):
        xb = x[start : start + chunk]
        n = xb.shape[0]
        # (n, oh, ow, C, k, k) view of the windows, one row per output position
        patches = xb.as_strided((n, oh, ow, C, kernel, kernel), (C * H * W, stride * W, stride, H * W, W, 1))
        g = grad_out[start : start + n].permute(1, 0, 2, 3).reshape(O, n * oh * ow)  # (O, n*L)
        grad_w.addmm_(g, patches.reshape(n * oh * ow, row))
    return grad_w


class _GemmWeightGradConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return nn.functional.conv2d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        s, k = ctx.stride, weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [s, s], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = gemm_weight_grad(x, grad_out, k, s).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state dict) with the GEMM weight gradient where it applies."""

    def fast(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.is_contiguous()  # NCHW: the patches are a view; channels_last stays oneDNN's
            and self.weight.dtype == torch.float32
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.stride[0] == self.stride[1]
            and self.kernel_size[0] == self.kernel_size[1]
            and self.padding_mode == "zeros"
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and backends.allowed(backends.Backend.FUSED)
        )

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.fast(input):
            return _GemmWeightGradConv.apply(input, weight, bias, self.stride[0])
        return super()._conv_forward(input, weight, bias)
