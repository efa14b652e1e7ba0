"""A PNG of test digits (top row) above the model's reconstructions of them (bottom row); for composed inputs
(MultiMNIST) the two digits' reconstructions are overlaid in red and green, as the paper's Fig. 5.

Drawn as one image array by capslab.analysis.grid and written with ``matplotlib.image.imsave`` (no
figure, no pyplot, no GUI backend): milliseconds, so every epoch can refresh it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from capslab.data.base import Split
from capslab.train.data import to_float


def overlay(images: torch.Tensor) -> torch.Tensor:
    """Gray (n, C=1, H, W) -> itself in RGB; K gray layers (n, K, 1, H, W) -> red, green (, blue) overlaid:
    two reconstructed digits in two colours, as in Sabour et al. 2017, Fig. 5."""
    if images.dim() == 4:
        return images.expand(-1, 3, -1, -1)
    n, K, _, H, W = images.shape
    rgb = images.new_zeros(n, 3, H, W)
    rgb[:, : min(K, 3)] = images[:, :3, 0]
    return rgb


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

    recon = out.reconstruction.float().cpu()
    if recon.dim() == 5:  # one reconstruction per composed digit (MultiMNIST): the paper's Fig. 5 colours
        images, recon = overlay(images.cpu()), overlay(recon)
    rows = torch.stack([images.cpu(), recon])  # (2, n, C, H, W): inputs, reconstructions
    save_image(path, image_grid(rows, gap), scale)
    return True
