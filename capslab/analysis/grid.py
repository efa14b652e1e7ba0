"""Image grids as one pixel array, written as PNG with ``matplotlib.image.imsave`` (no figure, no GUI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.image import imsave
from torch import Tensor


def image_grid(rows: Tensor, gap: int = 2, fill: float = 1.0) -> np.ndarray:
    """Images (R, K, C, H, W) in [0, 1] -> one (R*(H+gap)+gap, K*(W+gap)+gap, C) array, a ``fill`` frame between.

    Gray (C = 1) and colour (C = 3) images as they are; any other channel count (smallNORB's two cameras)
    as its channels side by side in gray."""
    R, K, C, H, W = rows.shape
    if C not in (1, 3):
        rows = rows.permute(0, 1, 3, 2, 4).reshape(R, K, 1, H, C * W)  # (R, K, 1, H, C * W)
        R, K, C, H, W = rows.shape
    grid = np.full((R * (H + gap) + gap, K * (W + gap) + gap, C), fill, dtype=np.float32)
    pixels = rows.detach().float().clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy()  # (R, K, H, W, C)
    for r in range(R):
        for k in range(K):
            y, x = gap + r * (H + gap), gap + k * (W + gap)
            grid[y : y + H, x : x + W] = pixels[r, k]
    return grid


def save_image(path: Path, grid: np.ndarray, scale: int = 1) -> Path:
    """Write a (H, W, C) array in [0, 1] as PNG (gray for C = 1), atomically: readers never see half a file."""
    grid = grid.repeat(scale, 0).repeat(scale, 1) if scale > 1 else grid
    tmp = path.with_name(f".{path.name}.tmp")
    if grid.shape[-1] == 1:
        imsave(tmp, grid[..., 0], cmap="gray", vmin=0, vmax=1, format="png")
    else:
        imsave(tmp, grid.clip(0, 1), format="png")
    tmp.replace(path)
    return path
