"""Scratch tensors reused across training steps (CPU).

Why: glibc hands blocks above 32 MB straight back to the OS when they are freed, so each fresh
(B, I, J, D) tensor (94 MB for CapsNet at batch 128) is zero-filled page by page on first touch:
about 23k page faults per tensor per step (what that costs: docs/performance.md).
A slot keeps its tensor and hands it out again once nothing else references its storage (the
previous step's graph is gone); while anything still does, the caller gets a new tensor, so reuse
never aliases live data. Slots are per thread. CUDA tensors come from PyTorch's caching allocator
and are not pooled, nor are tensors inside torch.compile'd code.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

_local = threading.local()


def _slots() -> dict[str, Tensor]:
    if not hasattr(_local, "slots"):
        _local.slots = {}
    return _local.slots


def _lone_storage_refs() -> int | None:
    """The storage use count of a tensor nothing else references, as this torch reports it: 2 on torch
    2.13 (the query's own reference counts), 1 on torch 2.4."""
    storage_refs = getattr(torch._C, "_storage_Use_Count", None)
    if storage_refs is None:
        return None
    lone = torch.empty(1)  # kept in a variable: a temporary would be freed before the query
    return storage_refs(lone.untyped_storage()._cdata)


_LONE = _lone_storage_refs()


def _unshared(t: Tensor) -> bool:
    """True when only the pool holds t's storage: no view, no detached alias (a ``.grad``), no graph."""
    storage_refs = getattr(torch._C, "_storage_Use_Count", None)  # private APIs: without them, never reuse
    impl_refs = getattr(t, "_use_count", None)
    if storage_refs is None or impl_refs is None or _LONE is None:
        return False
    return storage_refs(t.untyped_storage()._cdata) <= _LONE and impl_refs() <= 1


def scratch(slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` (dtype/device of ``like``), reused for ``slot`` when free."""
    if like.device.type != "cpu" or torch.compiler.is_compiling():  # compiled graphs plan their own memory
        return like.new_empty(shape)
    slots = _slots()
    t = slots.get(slot)
    # an inference tensor (made under torch.inference_mode) cannot be written outside that mode
    stale = t is not None and t.is_inference() and not torch.is_inference_mode_enabled()
    if t is None or stale or t.shape != shape or t.dtype != like.dtype or not _unshared(t):
        t = like.new_empty(shape)
        slots[slot] = t
    # a new alias of the pooled tensor, never the pooled object itself: a caller that keeps the very object
    # (a gradient handed back to the user, say) would leave its storage count unchanged and the slot
    # would be reused under it; an alias counts
    return t.view(shape)


def release() -> None:
    """Drop this thread's pooled tensors (frees their memory once no graph holds them)."""
    _slots().clear()
