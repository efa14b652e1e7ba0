"""A PNG of test digits (top row) above the model's reconstructions of them (bottom row).

Drawn as one image array by capslab.analysis.grid and written with ``matplotlib.image.imsave`` (no
figure, no pyplot, no GUI backend): milliseconds, so every epoch can refresh it.
"""

from __future__ import annotations

from pathlib import Path

import torch
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
    from capslab.analysis.grid import image_grid, save_image  # here: capslab.analysis imports the trainer's modules

    rows = torch.stack([images.cpu(), out.reconstruction.float().cpu()])  # (2, n, C, H, W): digits, reconstructions
    save_image(path, image_grid(rows, gap), scale)
    return True
