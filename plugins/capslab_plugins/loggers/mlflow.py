"""``mlflow``: each train and eval record as MLflow metrics, the recipe as run parameters, figures as artifacts.

``loggers: [{name: mlflow, tracking_uri: http://mlflow.example:5000, experiment: routing-sweep}]``. Without
``tracking_uri`` MLflow's own setting applies (``MLFLOW_TRACKING_URI``). The MLflow run id is kept in
``RUN_DIR/mlflow_run_id``, so ``--resume`` continues the same MLflow run. Metric keys are ``kind/key`` with
characters MLflow refuses (``@`` in ``test_error@affnist``) turned into ``_``. The run ends FINISHED, FAILED
or KILLED as the training did. Needs ``pip install 'capslab[mlflow]'`` (mlflow-skinny is enough).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import capslab
from capslab.loggers import flat, scalars

STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
PARAM_CHARS = 6000  # MLflow's longest parameter value


class MLflowParams(capslab.LoggerParams):
    tracking_uri: str | None = None  # default: MLflow's (MLFLOW_TRACKING_URI, else its local default)
    experiment: str = "capslab"
    run_name: str | None = None  # default: the run directory's name


def metric_key(tag: str) -> str:
    return re.sub(r"[^\w\-. :/]", "_", tag)


class MLflowLogger(capslab.Logger):
    name = "mlflow"
    Params = MLflowParams

    def __init__(self, run_dir: Path, **params: Any):
        super().__init__(run_dir, **params)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise capslab.CapslabError(
                f"loggers: mlflow needs the mlflow package ({exc}); pip install 'capslab[mlflow]' "
                f"or drop it from the recipe's loggers"
            ) from None
        self.client = MlflowClient(tracking_uri=self.params.tracking_uri)
        id_file = self.run_dir / "mlflow_run_id"
        if id_file.is_file():  # a resumed run continues its MLflow run
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(self.params.experiment)
            experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(self.params.experiment)
            )
            run = self.client.create_run(experiment_id, run_name=self.params.run_name or self.run_dir.name)
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n")

    def log_params(self, recipe: dict[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params  # parameters are write-once in MLflow
        params = [Param(key, str(value)[:PARAM_CHARS]) for key, value in flat(recipe).items() if key not in logged]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record.get("step", 0))
        metrics = [Metric(metric_key(tag), value, now, step) for tag, value in scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, name: str, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=f"figures/step-{step}")

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))


@capslab.hookimpl
def register_loggers(register):
    register(MLflowLogger)
