"""``efficient`` squash (Mazzia et al. 2021, Efficient-CapsNet): v = (1 - e^{-|s|}) * s / |s|."""

from torch import Tensor

import capslab


class EfficientSquash(capslab.Squash):
    name = "efficient"

    def forward(self, s: Tensor, dim: int = -1) -> Tensor:
        norm = capslab.safe_norm(s, dim, self.params.eps)
        return (1.0 - (-norm).exp()) * s / norm


@capslab.hookimpl
def register_squashes(register):
    register(EfficientSquash)
