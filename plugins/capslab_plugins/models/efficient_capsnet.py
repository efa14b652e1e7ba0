"""``efficient_capsnet``: Efficient-CapsNet (Mazzia, Salvetti, Chiaberge 2021), the MNIST model.

Conv 32 5x5 -> Conv 64 3x3 -> Conv 64 3x3 -> Conv 128 3x3 stride 2 (each ReLU then BatchNorm, 'valid')
-> primary capsules: a depthwise conv (kernel = the remaining grid, 9x9 on MNIST) whose 128 outputs are
16 capsules x 8D, squashed -> FCCaps: 10 x 16D class capsules, one 8x16 W per (i, j), routed by the
recipe's routing (``self_attention`` in the paper) -> optional decoder FC 512 -> 1024 -> pixels.
161k parameters on MNIST without the decoder (the paper's count; BatchNorm running statistics are buffers).
Initialisation as the official Keras code: he_normal convolutions and W.
"""

import math

import torch
from pydantic import Field
from torch import Tensor, nn

import capslab


class EfficientCapsNetParams(capslab.Params):
    conv_channels: list[capslab.PositiveInt] = [32, 64, 64, 128]
    conv_kernels: list[int] = [5, 3, 3, 3]
    conv_strides: list[int] = [1, 1, 1, 2]
    primary_caps: int = Field(16, ge=1)  # N; N * primary_dim must equal the last conv's channels
    primary_dim: int = Field(8, ge=1)
    class_dim: int = Field(16, ge=1)
    decoder: bool = True
    decoder_hidden: list[capslab.PositiveInt] = [512, 1024]


class EfficientCapsNet(capslab.Model):
    name = "efficient_capsnet"
    Params = EfficientCapsNetParams

    def __init__(self, ctx: capslab.BuildContext, **params):
        super().__init__(ctx, **params)
        p, info = self.params, ctx.info
        if not len(p.conv_channels) == len(p.conv_kernels) == len(p.conv_strides):
            raise capslab.CapslabError(
                "efficient_capsnet: model.conv_channels, conv_kernels and conv_strides need one entry per conv"
            )
        channels = p.conv_channels[-1]
        if p.primary_caps * p.primary_dim != channels:
            raise capslab.CapslabError(
                f"efficient_capsnet: primary_caps x primary_dim = {p.primary_caps * p.primary_dim} must equal the last "
                f"conv's channels ({channels}); change model.primary_caps or model.conv_channels"
            )
        layers: list[nn.Module] = []
        c_in, h, w = info.channels, info.height, info.width
        for c, k, s in zip(p.conv_channels, p.conv_kernels, p.conv_strides):
            conv = nn.Conv2d(c_in, c, k, s)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            # Keras BatchNormalization defaults: momentum 0.99, epsilon 1e-3
            layers += [conv, nn.ReLU(inplace=True), nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)]
            c_in, h, w = c, (h - k) // s + 1, (w - k) // s + 1
        if h < 1 or w < 1:
            raise capslab.CapslabError(
                f"efficient_capsnet: a {info.height}x{info.width} input is too small for its convs"
            )
        self.features = nn.Sequential(*layers)
        # depthwise conv over the whole remaining grid: one capsule property per channel
        self.primary = nn.Conv2d(channels, channels, (h, w), groups=channels)
        self.squash = ctx.squash
        spec = capslab.RoutingSpec(p.primary_caps, info.num_classes, p.class_dim, p.primary_dim)
        # Keras he_normal on a (J, I, K, D) tensor: fan_in = J * I * K
        std = math.sqrt(2.0 / (info.num_classes * p.primary_caps * p.primary_dim))
        self.caps = capslab.ClassCapsules(
            p.primary_caps, p.primary_dim, info.num_classes, p.class_dim, ctx.make_routing(spec), init_std=std
        )
        self.decoder = (
            capslab.MaskedDecoder(
                info.num_classes, p.class_dim, info.shape, tuple(p.decoder_hidden), separate=info.sources
            )
            if p.decoder
            else None
        )

    def forward(self, images: Tensor, targets: Tensor | None = None, *, diagnostics: bool = False):
        x = self.primary(self.features(images))  # (B, N * primary_dim, 1, 1)
        # channel n * primary_dim + d is property d of capsule n (the official Reshape((N, D)))
        u = self.squash(x.flatten(1).view(x.shape[0], self.params.primary_caps, self.params.primary_dim))
        a = torch.linalg.vector_norm(u, dim=-1)  # (B, N): the capsules' lengths, for routings that need activations
        r = self.caps(u, a, diagnostics=diagnostics)  # poses (B, J, D), activations (B, J)
        recon = self.decoder(r.poses, r.activations, targets) if self.decoder is not None else None
        return capslab.ModelOutput(r.activations, r.poses, recon, r)


@capslab.hookimpl
def register_models(register):
    register(EfficientCapsNet)
