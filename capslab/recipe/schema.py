"""The recipe schema: every key a recipe may hold, its default and its bounds.

Component sections (``data``, ``model``, ``routing``, ``squash``, ``loss``) are ``{name: <registry
name>, **params}``: the schema only checks the ``name``; the named plugin's own ``Params`` model checks
the rest (see :mod:`capslab.recipe.loader`). Every other section rejects unknown keys.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capslab.losses.reconstruction import ReconstructionParams
from capslab.params import Params

# recipe section -> registry kind of the plugin it names
COMPONENTS = {"data": "dataset", "model": "model", "routing": "routing", "squash": "squash", "loss": "loss"}


class Section(BaseModel):
    """``{name: dynamic, iterations: 3}``; the string ``dynamic`` is short for ``{name: dynamic}``."""

    model_config = ConfigDict(extra="allow")  # the plugin's Params forbids unknown keys, not the schema
    name: str

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def as_dict(self) -> dict[str, Any]:
        """What ``capslab.build_*`` takes."""
        return {"name": self.name, **self.params}


class OptimizerConfig(Params):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    momentum: float = Field(0.9, ge=0)  # sgd
    nesterov: bool = False  # sgd


class SchedulerConfig(Params):
    # exponential: lr * gamma^(step / every), smooth (TF staircase=False, as the official CapsNet code);
    # cosine: from lr down to min_lr over the whole run; none: constant lr.
    name: Literal["exponential", "cosine", "none"] = "exponential"
    gamma: float = Field(0.96, gt=0, le=1)
    every: int = Field(2000, ge=1)  # steps
    min_lr: float = Field(1e-6, ge=0)  # the official code's floor
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0, then the schedule


class TrainConfig(Params):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(500, ge=1)
    shift: int = Field(2, ge=0)  # random translations of up to this many pixels, zero padded (paper: 2)
    # random crop x crop windows in training, the central one in evaluation (paper: CIFAR-10 24, smallNORB 32)
    crop: int | None = Field(None, ge=1)
    device: str = "auto"  # auto: CUDA when present, else CPU
    bf16: bool = False  # bfloat16 autocast for the forward pass
    channels_last: bool = False
    compile: bool = False  # torch.compile the forward pass (checkpoints keep the plain model's names)
    threads: int | None = Field(None, ge=1, le=1024)  # torch.set_num_threads; None: torch's default
    limit_train: int | None = Field(None, ge=1)  # use a fixed random subset of this many examples
    limit_test: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)  # steps between train records in metrics.jsonl
    # stop after the first evaluation at or above this test accuracy (0..1): the CapsNet paper's affNIST
    # protocol compares networks stopped at matched test accuracy
    stop_at_accuracy: float | None = Field(None, gt=0, le=1)
    # a NaN / infinite loss or gradient: stop the run there (exit 1, last finite checkpoint kept), or skip the
    # update and stop after max_skipped in a row (capslab.train.divergence)
    nonfinite: Literal["stop", "skip_batch"] = "stop"
    max_skipped: int = Field(10, ge=1)
    # capslab.routing.backends' switch for debugging: auto (fastest path that applies), fused (no compiled
    # kernel), reference (the plain loops only); None: the CAPSLAB_ROUTING_BACKEND environment variable, else auto
    routing_backend: Literal["auto", "fused", "reference"] | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("expected auto, cpu, cuda, cuda:N or mps")
        return v


class CheckpointConfig(Params):
    keep: int = Field(3, ge=1)  # the last N checkpoints are kept


class Recipe(Params):
    """A whole experiment. Unknown keys anywhere are errors."""

    seed: int = Field(0, ge=0, lt=2**63)  # torch.manual_seed takes 64 bits
    data: Section = Section(name="mnist5k")
    model: Section = Section(name="capsnet")
    routing: Section = Section(name="dynamic")
    squash: Section = Section(name="sabour")
    loss: Section = Section(name="margin")
    reconstruction: ReconstructionParams = ReconstructionParams()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    diagnostics: bool = False  # routing diagnostics in metrics.jsonl at each evaluation
    # more test sets, each evaluated at every evaluation as test_error@<name> (e.g. affNIST for a model trained
    # on expanded MNIST); dataset sections like ``data``, whose images the model must take as they are
    test_also: list[Section] = []
    # trackers besides metrics.jsonl (always written): logger sections, e.g. [tensorboard]
    loggers: list[Section] = []

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what recipe.yaml and checkpoint metadata hold)."""
        return self.model_dump(mode="json", by_alias=True)
