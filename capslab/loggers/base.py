"""The logger contract. ``metrics.jsonl`` is always written (capslab.train.report.MetricsLog); the recipe's
``loggers`` list adds trackers (TensorBoard built in; MLflow or Weights & Biases as plugins), each receiving
every train and eval record, the resolved recipe as run parameters and the reconstruction figure."""

from __future__ import annotations

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
        """The resolved recipe, once at the start of a run (nested sections)."""

    def log(self, record: dict[str, Any]) -> None:
        """One record of metrics.jsonl (``kind`` train or eval, ``step``, numbers; None for NaN)."""

    def log_image(self, name: str, path: Path, step: int) -> None:
        """A figure written as a PNG (the reconstructions after each evaluation)."""

    def close(self) -> None:
        """Flush and release; called once at the end of the run, also when it fails."""
