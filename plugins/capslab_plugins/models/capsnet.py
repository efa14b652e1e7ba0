"""``capsnet``: the CapsNet of Sabour, Frosst, Hinton 2017 (Fig. 1 and 2).

Conv1 256 x 9x9 ReLU -> PrimaryCaps 32 types x 8D, 9x9 stride 2 (1152 capsules on 28x28, squashed) ->
class capsules 10 x 16D with a separate 8x16 W per (i, j), routed by the recipe's routing (given the
primary poses and their activations, ``model.activations``) -> decoder
FC 512 -> 1024 -> pixels (sigmoid) from the class capsules masked by the label (training) or the
prediction (evaluation). 8.2M parameters on MNIST, 6.8M without the decoder.
"""

from typing import Literal

from pydantic import Field
from torch import Tensor

import capslab


class CapsNetParams(capslab.Params):
    conv_channels: int = Field(256, ge=1)
    conv_kernel: int = Field(9, ge=1)
    primary_types: int = Field(32, ge=1)
    primary_dim: int = Field(8, ge=1)
    primary_kernel: int = Field(9, ge=1)
    primary_stride: int = Field(2, ge=1)
    # The official code's one-input "routing" scales primary capsules by 1/types; the paper does not.
    primary_scale: float = 1.0
    # what the routing receives as input activations a_i (EM, variational Bayes and self-routing need them):
    # "length": |u_i|, the squashed primary capsule's length; "sigmoid": a learned head (capslab.PrimaryCapsules)
    activations: Literal["length", "sigmoid"] = "length"
    class_dim: int = Field(16, ge=1)
    votes_init_std: float = Field(0.1, gt=0)  # std of each W_ij entry (the official code's truncated normal: 0.1)
    decoder: bool = True
    decoder_hidden: list[capslab.PositiveInt] = [512, 1024]


class CapsNet(capslab.Model):
    name = "capsnet"
    Params = CapsNetParams

    def __init__(self, ctx: capslab.BuildContext, **params):
        super().__init__(ctx, **params)
        p, info = self.params, ctx.info
        self.conv1 = capslab.Conv2d(info.channels, p.conv_channels, p.conv_kernel)
        self.primary = capslab.PrimaryCapsules(
            p.conv_channels,
            p.primary_types,
            p.primary_dim,
            p.primary_kernel,
            p.primary_stride,
            squash=ctx.squash,
            scale=p.primary_scale,
            activation=p.activations,
        )
        h, w = self.primary.output_grid(info.height - p.conv_kernel + 1, info.width - p.conv_kernel + 1)
        if h < 1 or w < 1:
            raise capslab.CapslabError(f"capsnet: a {info.height}x{info.width} input is too small for its kernels")
        in_caps = p.primary_types * h * w
        spec = capslab.RoutingSpec(in_caps, info.num_classes, p.class_dim, p.primary_dim)
        self.caps = capslab.ClassCapsules(
            in_caps, p.primary_dim, info.num_classes, p.class_dim, ctx.make_routing(spec), init_std=p.votes_init_std
        )
        self.decoder = (
            capslab.MaskedDecoder(
                info.num_classes, p.class_dim, info.shape, tuple(p.decoder_hidden), separate=info.sources
            )
            if p.decoder
            else None
        )

    def forward(self, images: Tensor, targets: Tensor | None = None, *, diagnostics: bool = False):
        u, a = self.primary(self.conv1(images).relu_())  # (B, I, primary_dim), (B, I)
        r = self.caps(u, a, diagnostics=diagnostics)  # poses (B, J, D), activations (B, J)
        recon = self.decoder(r.poses, r.activations, targets) if self.decoder is not None else None
        return capslab.ModelOutput(r.activations, r.poses, recon, r)


@capslab.hookimpl
def register_models(register):
    register(CapsNet)
