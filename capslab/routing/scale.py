"""Routing on votes at a known scale: the routings whose constants are absolute (EM's variance floor and
inverse temperature, the Normal-Wishart prior of variational Bayes) see votes of unit RMS.

In their papers' models the votes arrive at a scale those constants were tuned for; on another backbone
they may not (CapsNet's primary capsules have |u| ~ 0.1 and votes of per-dimension variance ~1e-4, below
EM's variance floor 5e-4 and far below VB's prior Psi0 = I, so the floor or the prior decides, not the
data). Dividing each example's votes by their RMS makes those constants relative to the vote scale; the
output poses are multiplied back, so the layer's poses keep the votes' scale.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

VoteScale = Literal["rms", "raw"]
RMS_EPS = 1e-12  # inside the root of the RMS


def normalize_votes(votes: Tensor, how: VoteScale, eps: float = RMS_EPS) -> tuple[Tensor, Tensor | float]:
    """votes (B, I, J, D) -> (votes / s, s) with s (B, 1, 1, 1) the RMS of each example's votes ("rms"),
    or (votes, 1.0) ("raw")."""
    if how == "raw":
        return votes, 1.0
    s = votes.square().mean((1, 2, 3), keepdim=True).add(eps).sqrt()  # (B, 1, 1, 1)
    return votes / s, s


def rescale_poses(poses: Tensor, s: Tensor | float) -> Tensor:
    """poses (B, J, D) routed on normalised votes -> back at the votes' scale."""
    return poses if isinstance(s, float) else poses * s.view(-1, 1, 1)
