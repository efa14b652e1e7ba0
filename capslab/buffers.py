"""Scratch tensors reused across training steps (CPU).

Why: glibc hands blocks above 32 MB straight back to the OS when they are freed, so each fresh
(B, I, J, D) tensor (94 MB for CapsNet at batch 128) is zero-filled page by page on first touch:
about 23k page faults, ~25 ms of one core per tensor per step, a third of what the routing costs.
A slot keeps its tensor and hands it out again once nothing else references its storage (the
previous step's graph is gone); while anything still does, the caller gets a new tensor, so reuse
never aliases live data. CUDA tensors come from PyTorch's caching allocator and are not pooled.
"""

from __future__ import annotations

import torch
from torch import Tensor

_slots: dict[str, Tensor] = {}


def _unshared(t: Tensor) -> bool:
    """True when only the pool holds t's storage (the query itself adds one reference)."""
    count = getattr(torch._C, "_storage_Use_Count", None)  # private API: without it, never reuse
    return count is not None and t._base is None and count(t.untyped_storage()._cdata) <= 2 and t._use_count() <= 1


def scratch(slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` (dtype/device of ``like``), reused for ``slot`` when free."""
    if like.device.type != "cpu":
        return like.new_empty(shape)
    t = _slots.get(slot)
    if t is None or t.shape != shape or t.dtype != like.dtype or not _unshared(t):
        t = like.new_empty(shape)
        _slots[slot] = t
    return t


def release() -> None:
    """Drop every pooled tensor (frees their memory once no graph holds them)."""
    _slots.clear()
