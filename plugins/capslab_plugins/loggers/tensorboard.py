"""``tensorboard``: scalars, the recipe and the reconstruction figure as TensorBoard event files.

Writes to ``RUN_DIR/tensorboard`` (``log_dir`` to change it): every number of each train and eval record as
a scalar ``<kind>/<key>`` at the record's step, the resolved recipe as text, and ``reconstructions.png`` as
an image. Needs the ``tensorboard`` package (``pip install capslab[tensorboard]``); view with
``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import capslab
from capslab.loggers import scalars


class TensorBoardParams(capslab.LoggerParams):
    log_dir: str | None = None  # default: RUN_DIR/tensorboard


class TensorBoardLogger(capslab.Logger):
    name = "tensorboard"
    Params = TensorBoardParams

    def __init__(self, run_dir: Path, **params: Any):
        super().__init__(run_dir, **params)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise capslab.CapslabError(
                f"loggers: tensorboard needs the tensorboard package ({exc}); pip install 'capslab[tensorboard]' "
                f"or drop it from the recipe's loggers"
            ) from None
        self.writer = SummaryWriter(log_dir=self.params.log_dir or str(self.run_dir / "tensorboard"))

    def log_params(self, recipe: dict[str, Any]) -> None:
        self.writer.add_text("recipe", "```\n" + json.dumps(recipe, indent=2) + "\n```", 0)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, int(record.get("step", 0)))

    def log_image(self, name: str, path: Path, step: int) -> None:
        from matplotlib.image import imread

        pixels = imread(str(path))[..., :3]  # (H, W, 3) in [0, 1]
        self.writer.add_image(name, pixels, step, dataformats="HWC")

    def close(self, status: str = "finished") -> None:
        self.writer.close()


@capslab.hookimpl
def register_loggers(register):
    register(TensorBoardLogger)
