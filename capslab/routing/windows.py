"""Conv-capsule windows folded into the batch, and routing normalised over every window an input reaches.

A conv-capsule layer (matrix_capsnet's ConvCapsules) routes the K x K x T_in input capsules under each
output position with the L = H' x W' positions folded into the batch: votes (B * L, I, J, D) with
I = K * K * T_in. An input capsule under overlapping windows then appears in several of them. Normalising the
assignments R_ij over the outputs of each window separately gives such a capsule a total mass of one per
window it falls in; the official EM code (google-research capsule_em, ``em_layers.py``) normalises R of each
input capsule over every parent it reaches, in every window, so that its R sums to one. :class:`ConvWindows`
tells a routing which windowed input is which real input capsule, and :meth:`ConvWindows.log_softmax` does
that normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class ConvWindows:
    """Input capsule ``i`` of window ``l`` is the layer's real input capsule ``index[l, i]`` (of ``num_inputs``)."""

    index: Tensor  # (L, I) long
    num_inputs: int  # N = T_in * H * W

    @classmethod
    def grid(cls, types: int, height: int, width: int, kernel: int, stride: int) -> ConvWindows:
        """Windows of a K x K, stride-s conv over a (types, height, width) capsule map, in the order ConvCapsules
        folds them: window l = row-major output position, windowed input i = type * K * K + kernel position."""
        out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        rows = (torch.arange(out_h) * stride)[:, None, None, None] + torch.arange(kernel)[None, None, :, None]
        cols = (torch.arange(out_w) * stride)[None, :, None, None] + torch.arange(kernel)[None, None, None, :]
        pos = (rows * width + cols).reshape(out_h * out_w, kernel * kernel)  # (L, K * K) spatial index
        types_off = torch.arange(types)[:, None] * (height * width)  # (T, 1)
        index = (types_off[None] + pos[:, None, :]).reshape(out_h * out_w, types * kernel * kernel)  # (L, I)
        return cls(index, types * height * width)

    @property
    def positions(self) -> int:
        return self.index.shape[0]

    def log_softmax(self, logits: Tensor) -> Tensor:
        """logits (B * L, J, I) -> log R, normalised over every (window, output) pair each real input reaches."""
        BL, J, I = logits.shape
        L = self.positions
        x = logits.reshape(BL // L, L, J, I)  # (B, L, J, I)
        idx = self.index.to(logits.device)[None, :, None, :].expand_as(x).reshape(x.shape[0], -1)  # (B, L*J*I)
        flat = x.reshape(x.shape[0], -1)
        # a per-input maximum keeps the exponentials finite; it cancels out of the result, so no gradient
        peak = flat.new_full((x.shape[0], self.num_inputs), -torch.inf)
        peak = peak.scatter_reduce(1, idx, flat.detach(), "amax").gather(1, idx)  # (B, L*J*I)
        shifted = flat - peak
        total = flat.new_zeros(x.shape[0], self.num_inputs).scatter_add(1, idx, shifted.exp())  # (B, N)
        return (shifted - total.gather(1, idx).log()).reshape(BL, J, I)
