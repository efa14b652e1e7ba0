"""``wandb``: each train and eval record, the recipe as config and the figures to Weights & Biases.

``loggers: [{name: wandb, project: capsules, entity: my-team}]``; ``mode: offline`` writes under
``RUN_DIR/wandb`` for ``wandb sync`` later (no account needed), ``mode: online`` needs ``wandb login``. The
W&B run id is kept in ``RUN_DIR/wandb_run_id``, so ``--resume`` continues the same W&B run. Needs
``pip install 'capslab[wandb]'``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Literal

import capslab
from capslab.loggers import scalars


class WandbParams(capslab.LoggerParams):
    project: str = "capslab"
    entity: str | None = None
    run_name: str | None = None  # default: the run directory's name
    mode: Literal["online", "offline"] = "online"


class WandbLogger(capslab.Logger):
    name = "wandb"
    Params = WandbParams

    def __init__(self, run_dir: Path, **params: Any):
        super().__init__(run_dir, **params)
        try:
            import wandb
        except ImportError as exc:
            raise capslab.CapslabError(
                f"loggers: wandb needs the wandb package ({exc}); pip install 'capslab[wandb]' "
                f"or drop it from the recipe's loggers"
            ) from None
        self.wandb = wandb
        id_file = self.run_dir / "wandb_run_id"
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(4) + "\n")
        self.run = wandb.init(
            project=self.params.project,
            entity=self.params.entity,
            name=self.params.run_name or self.run_dir.name,
            id=id_file.read_text().strip(),
            resume="allow",  # a resumed run continues its W&B run
            dir=str(self.run_dir),
            mode=self.params.mode,
        )

    def log_params(self, recipe: dict[str, Any]) -> None:
        self.run.config.update(recipe, allow_val_change=True)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record.get("step", 0)))

    def log_image(self, name: str, path: Path, step: int) -> None:
        self.run.log({name: self.wandb.Image(str(path))}, step=step)

    def close(self, status: str = "finished") -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


@capslab.hookimpl
def register_loggers(register):
    register(WandbLogger)
