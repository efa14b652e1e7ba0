"""Primary capsules: a convolution whose channels are grouped into capsule vectors."""

from __future__ import annotations

from torch import Tensor, nn


class PrimaryCapsules(nn.Module):
    """Conv -> (B, types * H' * W', dim) capsules, squashed.

    Channel ``t * dim + d`` of the convolution is component d of the capsule of type t at each spatial
    position, so a capsule is the ``dim`` channels of one type at one position (ports that reshape
    without the permute group ``dim`` neighbouring pixels of one channel instead). Capsule index
    ``i = t * H' * W' + y * W' + x``.
    """

    def __init__(self, in_channels: int, types: int = 32, dim: int = 8, kernel_size: int = 9, stride: int = 2,
                 squash: nn.Module | None = None, scale: float = 1.0):
        super().__init__()
        self.types, self.dim, self.scale = types, dim, scale
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size, stride)
        self.squash = squash

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        return (height - k) // s + 1, (width - k) // s + 1

    def forward(self, x: Tensor) -> Tensor:
        return self.capsules(self.conv(x))

    def capsules(self, conv_out: Tensor) -> Tensor:
        """(B, types * dim, H, W) conv output -> (B, types * H * W, dim) squashed capsules."""
        B, _, H, W = conv_out.shape
        u = conv_out.reshape(B, self.types, self.dim, H, W).permute(0, 1, 3, 4, 2)  # (B, T, H, W, dim)
        u = u.reshape(B, self.types * H * W, self.dim)
        if self.scale != 1.0:  # the official code's one-input routing scales by 1/types here
            u = u * self.scale
        return self.squash(u) if self.squash is not None else u
