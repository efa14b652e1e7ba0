"""Batched data augmentation: random shifts (MNIST), random and centre crops (CIFAR-10, SVHN, smallNORB).

``random_shift`` is the paper's only augmentation (Sabour et al. 2017, Sec. 5: "shifted by up to 2
pixels in each direction with zero padding"): out[b, c, y, x] = in[b, c, y - dy_b, x - dx_b], zero where
the source falls outside the image, with (dx_b, dy_b) drawn uniformly from [-m, m]^2 per image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of (B, C, H, W) by its own random integer (dx, dy), |dx|, |dy| <= max_shift.

    Zero fill, one gather for the whole batch, on the input's device; the shifts are drawn from
    ``generator`` (on its own device) when given, so the result is reproducible.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0 or images.numel() == 0:
        return images
    m = max_shift
    rng_device = generator.device if generator is not None else images.device
    shift = torch.randint(-m, m + 1, (images.shape[0], 2), generator=generator, device=rng_device).to(images.device)
    return shift_images(images, shift[:, 0], shift[:, 1])


def shift_images(images: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """out[b, c, y, x] = images[b, c, y - dy_b, x - dx_b], zero where that falls outside; dx, dy (B,) integers."""
    b, c, h, w = images.shape
    m = int(max(dx.abs().max(), dy.abs().max())) if b else 0
    padded = F.pad(images, (m, m, m, m))  # (B, C, H + 2m, W + 2m); padded[.., y + m, x + m] = in[.., y, x]
    # out[y, x] = in[y - dy, x - dx] = padded[y - dy + m, x - dx + m]; 0 where that lands in the padding
    rows = torch.arange(h, device=images.device) + (m - dy.view(-1, 1).to(images.device))  # (B, H)
    cols = torch.arange(w, device=images.device) + (m - dx.view(-1, 1).to(images.device))  # (B, W)
    # one flat gather over (H * W) per image: much faster on CPU than 4-D advanced indexing
    flat = (rows[:, :, None] * (w + 2 * m) + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).reshape(b, c, h, w)


def random_crop(images: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """A size x size window of each image of (B, C, H, W) at its own random offset (the CapsNet paper's
    CIFAR-10 24 x 24 crops and smallNORB 32 x 32 crops); offsets drawn from ``generator``."""
    b, c, h, w = images.shape
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the {h}x{w} images")
    rng_device = generator.device if generator is not None else images.device
    top = torch.randint(0, h - size + 1, (b, 1), generator=generator, device=rng_device).to(images.device)  # (B, 1)
    left = torch.randint(0, w - size + 1, (b, 1), generator=generator, device=rng_device).to(images.device)
    rows = torch.arange(size, device=images.device) + top  # (B, S)
    cols = torch.arange(size, device=images.device) + left  # (B, S)
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, size * size).expand(b, c, size * size)
    return images.reshape(b, c, h * w).gather(2, flat).reshape(b, c, size, size)


def centre_crop(images: Tensor, size: int) -> Tensor:
    """The central size x size window of (B, C, H, W) (the test-time counterpart of ``random_crop``)."""
    h, w = images.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]
