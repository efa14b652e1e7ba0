"""``sabour`` squash (Sabour, Frosst, Hinton 2017, Eq. 1): v = |s|^2 / (1 + |s|^2) * s / |s|.

The norm is sqrt(sum s^2 + eps), eps inside the root, so v and dv/ds are finite at s = 0 (the official
code has no eps and gives NaN there).
"""

from torch import Tensor

import capslab
from capslab.routing import backends


@backends.compiled_squash("sabour")  # the compiled CPU routing kernel has this formula built in
class SabourSquash(capslab.Squash):
    name = "sabour"

    def forward(self, s: Tensor, dim: int = -1) -> Tensor:
        sq = s.pow(2).sum(dim, keepdim=True)
        # |s|^2/(1+|s|^2) / |s| = |s| / (1 + |s|^2), written with the safe norm
        return s * ((sq + self.params.eps).sqrt() / (1.0 + sq))


@capslab.hookimpl
def register_squashes(register):
    register(SabourSquash)
