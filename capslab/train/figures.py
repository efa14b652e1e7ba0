"""A PNG of test digits (top row) above the model's reconstructions of them (bottom row).

Drawn as one image array and written with ``matplotlib.image.imsave`` (no figure, no pyplot, no GUI
backend): milliseconds, so every epoch can refresh it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.image import imsave
from torch import nn

from capslab.data.base import Split
from capslab.train.runtime import to_float


@torch.no_grad()
def save_reconstructions(
    model: nn.Module, data: Split, path: Path, device: torch.device, count: int = 10, scale: int = 3, gap: int = 2
) -> bool:
    """Write the figure; False (and no file) when the model has no decoder."""
    was_training = model.training
    model.eval()
    images = to_float(data.images[:count]).to(device)  # (n, C, H, W)
    out = model(images)
    model.train(was_training)
    if out.reconstruction is None:
        return False
    rows = [images.cpu(), out.reconstruction.float().clamp(0, 1).cpu()]
    n, c, h, w = rows[0].shape
    grid = np.ones((2 * h + 3 * gap, n * (w + gap) + gap, c), dtype=np.float32)  # white frame between digits
    for r, batch in enumerate(rows):
        for k in range(n):
            y, x = gap + r * (h + gap), gap + k * (w + gap)
            grid[y : y + h, x : x + w] = batch[k].permute(1, 2, 0).numpy()
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    if c == 1:
        imsave(tmp, grid[..., 0], cmap="gray", vmin=0, vmax=1, format="png")
    else:
        imsave(tmp, grid.clip(0, 1), format="png")
    tmp.replace(path)
    return True
