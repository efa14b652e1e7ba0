"""Squash functions: the non-linearity that maps a capsule's total input to a vector of length < 1."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from capslab.params import Component, Params


class SquashParams(Params):
    # Inside the square root, so the norm (and its gradient) stays finite at s = 0.
    eps: float = Field(1e-7, gt=0)


class Squash(Component, nn.Module):
    """Base class of squash plugins: ``forward(s, dim)`` returns a tensor of s's shape."""

    Params = SquashParams

    def __init__(self, **params):
        nn.Module.__init__(self)
        self.params = self.validate_params(params)

    def forward(self, s: Tensor, dim: int = -1) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"eps={self.params.eps}"


def safe_norm(s: Tensor, dim: int = -1, eps: float = 1e-7, keepdim: bool = True) -> Tensor:
    """sqrt(sum s^2 + eps): finite value and gradient at s = 0."""
    return (s.pow(2).sum(dim, keepdim=keepdim) + eps).sqrt()


def default_squash() -> Squash:
    """The paper's squash (the registered ``sabour``)."""
    from capslab.plugin import registry

    return registry("squash").get("sabour")()
