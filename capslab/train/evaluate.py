"""Evaluation: loss, accuracy and (optionally) routing diagnostics over a whole split."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from capslab.data.base import Split
from capslab.losses.reconstruction import ReconstructionParams
from capslab.train.data import eval_batches
from capslab.train.diagnostics import RoutingStats
from capslab.train.objective import correct, total_loss


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Split,
    *,
    device: torch.device,
    batch_size: int = 500,
    loss_fn: nn.Module | None = None,
    recon: ReconstructionParams | None = None,
    step: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    diagnostics: bool = False,
) -> dict[str, Any]:
    """{"loss" (when a loss is given), "accuracy", "error", "examples", routing diagnostics}."""
    was_training = model.training
    model.eval()
    n, hits, loss_sum = 0, 0, 0.0
    stats = RoutingStats()
    for images, targets, sources in eval_batches(data, batch_size):
        images, targets = images.to(device), targets.to(device)
        sources = sources.to(device) if sources is not None else None
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            out = model(images, diagnostics=diagnostics)
        scores = out.scores.float()
        hits += correct(scores, targets)
        if loss_fn is not None:
            loss_sum += float(
                total_loss(out, images, targets, loss_fn, recon or ReconstructionParams(enabled=False), step, sources)
            ) * len(targets)
        if diagnostics:
            stats.add(out.routing, scores)
        n += len(targets)
    model.train(was_training)
    if diagnostics:
        from capslab.routing.base import Routing

        names = [m.name for m in model.modules() if isinstance(m, Routing)]
        if names:
            stats.warn_if_silent(names[-1])
    result: dict[str, Any] = {"examples": n, "accuracy": hits / max(n, 1), "error": 1 - hits / max(n, 1)}
    if loss_fn is not None:
        result["loss"] = loss_sum / max(n, 1)
    return {**result, **stats.summary()}


@torch.inference_mode()
def evaluate_ensemble(models: list[nn.Module], data: Split, *, device: torch.device, batch_size: int = 500) -> dict:
    """Accuracy of the mean class scores (capsule lengths) of ``models`` (the CapsNet paper's CIFAR-10
    ensemble), beside each member's own: {"examples", "accuracy", "error", "members": [accuracy, ...]}."""
    for m in models:
        m.eval()
    n, hits, member_hits = 0, 0, [0] * len(models)
    for images, targets, _ in eval_batches(data, batch_size):
        images, targets = images.to(device), targets.to(device)
        scores = [m(images).scores.float() for m in models]  # each (B, J)
        for k, s in enumerate(scores):
            member_hits[k] += correct(s, targets)
        hits += correct(torch.stack(scores).mean(0), targets)
        n += len(targets)
    acc = hits / max(n, 1)
    return {"examples": n, "accuracy": acc, "error": 1 - acc, "members": [h / max(n, 1) for h in member_hits]}
