"""Model plugins: built from the data's shape plus the recipe's routing and squash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from capslab.data.base import DataInfo
from capslab.params import Component
from capslab.routing.base import Routing, RoutingResult, RoutingSpec


@dataclass
class ModelOutput:
    scores: Tensor  # (B, J): capsule lengths / activations, or logits (see Model.scores)
    poses: Tensor | None = None  # (B, J, D) class-capsule poses
    reconstruction: Tensor | None = None  # (B, C, H, W) decoder output in [0, 1]
    routing: RoutingResult | None = None  # the class layer's routing result (diagnostics inside)


@dataclass
class BuildContext:
    info: DataInfo
    make_routing: Callable[[RoutingSpec], Routing]  # the recipe's routing section, for a given shape
    squash: nn.Module  # the recipe's squash


class Model(Component, nn.Module):
    """Base class of model plugins: ``forward(images, targets=None, diagnostics=False)``."""

    # "probability": scores are capsule lengths/activations in [0, 1]; "logits": unbounded class scores.
    scores: ClassVar[str] = "probability"

    def __init__(self, ctx: BuildContext, **params):
        nn.Module.__init__(self)
        self.params = self.validate_params(params)
        self.info = ctx.info

    def forward(self, images: Tensor, targets: Tensor | None = None, *, diagnostics: bool = False) -> ModelOutput:
        raise NotImplementedError

    def num_parameters(self, include_decoder: bool = True) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if include_decoder or not n.startswith("decoder."))
