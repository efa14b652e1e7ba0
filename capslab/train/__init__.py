"""Training: the loop, optimizers and schedules, evaluation, safetensors checkpoints, diagnostics."""

from capslab.train.checkpoint import resolve_checkpoint
from capslab.train.evaluate import evaluate
from capslab.train.optim import build_optimizer, lr_at
from capslab.train.state import load_checkpoint_model
from capslab.train.trainer import train

__all__ = ["build_optimizer", "evaluate", "load_checkpoint_model", "lr_at", "resolve_checkpoint", "train"]
