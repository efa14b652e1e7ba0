"""The logger contract. ``metrics.jsonl`` is always written (capslab.train.report.MetricsLog); the recipe's
``loggers`` list adds trackers (TensorBoard, MLflow and Weights & Biases built in), each receiving every train
and eval record, the resolved recipe as run parameters and the reconstruction figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capslab.params import Component, Params


class LoggerParams(Params):
    pass


class Logger(Component):
    """Base class of logger plugins: ``__init__(run_dir, **params)``, then the four methods below."""

    Params = LoggerParams

    def __init__(self, run_dir: Path, **params: Any):
        self.run_dir = Path(run_dir)
        self.params = self.validate_params(params)

    def log_params(self, recipe: dict[str, Any]) -> None:
        """The resolved recipe, once at the start of a run (nested sections; ``flat`` joins the keys)."""

    def log(self, record: dict[str, Any]) -> None:
        """One record of metrics.jsonl (``kind`` train or eval, ``step``, numbers; None for NaN);
        ``scalars`` gives its numbers as ``kind/key``."""

    def log_image(self, name: str, path: Path, step: int) -> None:
        """A figure written as a PNG (the reconstructions after each evaluation)."""

    def close(self, status: str = "finished") -> None:
        """Flush and release; called once at the end of the run with ``finished``, ``failed``
        (an error) or ``killed`` (interrupted)."""


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested recipe sections as ``section.key`` -> scalar (lists and other values as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one record as ``kind/key`` (``train/loss``, ``eval/test_error``); None and flags dropped."""
    kind = record.get("kind", "record")
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
