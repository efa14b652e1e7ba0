"""Divergence: a NaN or infinite loss or gradient is caught on the step it happens.

``train.nonfinite: stop`` (default) ends the run on that step with one line naming the step, the epoch and
the last finite checkpoint (untouched: nothing is written after it); ``skip_batch`` drops that update,
counts it, and stops after ``train.max_skipped`` in a row. The check runs after the backward pass and
before the optimizer step, so the weights never take a non-finite value.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from capslab.errors import TrainingDiverged
from capslab.train import checkpoint as ckpt


def total_norm(tensors: list[Tensor]) -> Tensor:
    """One fused 2-norm over many tensors (``torch.nn.utils.get_total_norm`` from torch 2.6 on)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def nonfinite(loss: Tensor, model: nn.Module) -> str | None:
    """What is not finite — 'the loss is nan', 'the gradient of caps.weight has inf' — or None."""
    if not bool(torch.isfinite(loss.detach()).all()):
        return f"the loss is {float(loss.detach()):g}"
    grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    # one fused norm over every gradient and one sync per step; a NaN or inf anywhere makes it non-finite
    if grads and not bool(torch.isfinite(total_norm([g for _, g in grads]))):
        name = next((n for n, g in grads if not bool(torch.isfinite(g).all())), grads[0][0])
        return f"the gradient of {name} is not finite"
    return None


def last_checkpoint(run_dir: Path) -> str:
    try:
        return str(ckpt.resolve_checkpoint(run_dir))
    except Exception:  # none written yet, or unreadable: say so rather than fail while reporting
        return "none yet"


class DivergenceGuard:
    def __init__(self, policy: str, max_skipped: int, run_dir: Path):
        self.policy, self.max_skipped, self.run_dir = policy, max_skipped, run_dir
        self.in_a_row = 0
        self.skipped = 0

    def skip(self, loss: Tensor, model: nn.Module, step: int, epoch: int) -> bool:
        """True: drop this batch's update (skip_batch). Raises TrainingDiverged when the run must stop."""
        what = nonfinite(loss, model)
        if what is None:
            self.in_a_row = 0
            return False
        where = f"step {step}, epoch {epoch}: {what}"
        if self.policy == "skip_batch":
            self.in_a_row += 1
            self.skipped += 1
            if self.in_a_row < self.max_skipped:
                return True
            where += f" ({self.in_a_row} steps in a row, train.max_skipped)"
        raise TrainingDiverged(
            f"training diverged at {where}; the last finite checkpoint is {last_checkpoint(self.run_dir)} "
            f"(resume from it with a lower optimizer.lr, or set train.nonfinite=skip_batch)"
        )
