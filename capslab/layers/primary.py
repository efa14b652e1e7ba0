"""Primary capsules: a convolution whose channels are grouped into capsule vectors, with activations."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from capslab.layers.conv import Conv2d

Activation = Literal["length", "sigmoid"]


class PrimaryCapsules(nn.Module):
    """Conv -> poses (B, types * H' * W', dim), squashed, and activations (B, types * H' * W').

    Channel ``t * dim + d`` of the convolution is component d of the capsule of type t at each spatial
    position, so a capsule is the ``dim`` channels of one type at one position (ports that reshape
    without the permute group ``dim`` neighbouring pixels of one channel instead). Capsule index
    ``i = t * H' * W' + y * W' + x``.

    ``activation`` says what the routing receives as a_i (routings that need activations: EM,
    variational Bayes, self-routing):

    - ``"length"``: |u_i|, the length of the squashed pose (Sabour 2017: a capsule's length is the
      probability that its entity is present);
    - ``"sigmoid"``: a learned head, sigmoid(BatchNorm(conv(x))) with one output channel per capsule type
      and the pose convolution's kernel and stride, as SR-CapsNet's primary capsules (coder3000/SR-CapsNet
      ``models.py``: conv_a, bn_a) and the logistic unit of EM's primary capsules (Hinton 2018, Sec. 3).
    """

    def __init__(
        self,
        in_channels: int,
        types: int = 32,
        dim: int = 8,
        kernel_size: int = 9,
        stride: int = 2,
        squash: nn.Module | None = None,
        scale: float = 1.0,
        activation: Activation = "length",
    ):
        super().__init__()
        self.types, self.dim, self.scale = types, dim, scale
        self.conv = Conv2d(in_channels, types * dim, kernel_size, stride)
        self.squash = squash
        self.activation = activation
        self.head = (
            nn.Sequential(nn.Conv2d(in_channels, types, kernel_size, stride), nn.BatchNorm2d(types))
            if activation == "sigmoid"
            else None
        )

    def output_grid(self, height: int, width: int) -> tuple[int, int]:
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        return (height - k) // s + 1, (width - k) // s + 1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> poses (B, I, dim), activations (B, I)."""
        u = self.capsules(self.conv(x))
        if self.head is None:
            return u, torch.linalg.vector_norm(u, dim=-1)
        return u, self.head(x).sigmoid().flatten(1)  # (B, types, H', W') -> (B, I), i = t * H' * W' + y * W' + x

    def capsules(self, conv_out: Tensor) -> Tensor:
        """(B, types * dim, H, W) conv output -> (B, types * H * W, dim) squashed capsules."""
        B, _, H, W = conv_out.shape
        u = conv_out.reshape(B, self.types, self.dim, H, W).permute(0, 1, 3, 4, 2)  # (B, T, H, W, dim)
        u = u.reshape(B, self.types * H * W, self.dim)
        if self.scale != 1.0:  # the official code's one-input routing scales by 1/types here
            u = u * self.scale
        return self.squash(u) if self.squash is not None else u
