"""Loggers are a plugin kind: metrics.jsonl is always written, and the recipe's ``loggers`` add trackers; the
built-in TensorBoard logger's event file holds every record, the recipe and the reconstruction figure."""

import json

import pytest
from test_cli import TINY, run

import capslab


def test_tensorboard_receives_records_recipe_and_figure(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "r"
    res = run(
        "train", "recipes/quickstart.yaml", *TINY, "train.epochs=2", "loggers=[tensorboard]", "--run-dir", run_dir
    )
    assert res.exit_code == 0, res.output
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    errors = events.Scalars("eval/test_error")
    assert [e.step for e in errors] == [r["step"] for r in evals]
    assert [round(e.value, 6) for e in errors] == [round(r["test_error"], 6) for r in evals]
    assert "train/loss" in tags["scalars"] and "reconstructions" in tags["images"]
    assert "recipe/text_summary" in tags["tensors"]


def test_loggers_are_registered_and_validated():
    assert "tensorboard" in capslab.registry("logger").names()
    bad = run("validate", "recipes/quickstart.yaml", "loggers=[tensorbored]")
    assert bad.exit_code == 2 and "did you mean 'tensorboard'" in bad.output
    bad = run("validate", "recipes/quickstart.yaml", "loggers=[{name: tensorboard, color: red}]")
    assert bad.exit_code == 2 and "loggers.0.color: unknown key" in bad.output


def test_mlflow_gets_records_params_figures_and_continues_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store for the test; users point at a server
    uri = (tmp_path / "mlruns").as_uri()
    logger = f"loggers=[{{name: mlflow, tracking_uri: '{uri}', experiment: t}}]"
    run_dir = tmp_path / "r"
    res = run("train", "recipes/quickstart.yaml", *TINY, "train.epochs=1", logger, "--run-dir", run_dir)
    assert res.exit_code == 0, res.output
    res = run("train", "train.epochs=2", "--resume", run_dir)
    assert res.exit_code == 0, res.output
    client = MlflowClient(uri)
    (only,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])  # resume: the same run
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    history = client.get_metric_history(only.info.run_id, "eval/test_error")
    assert [(m.step, round(m.value, 6)) for m in history] == [(r["step"], round(r["test_error"], 6)) for r in evals]
    assert len(evals) == 2 and only.info.status == "FINISHED"
    assert only.data.params["routing.name"] == "dynamic" and only.data.params["train.epochs"] == "1"
    figures = [f.path for f in client.list_artifacts(only.info.run_id, "figures")]
    assert len(figures) == 2  # one reconstruction figure per evaluation


def test_a_failed_run_is_marked_failed_in_the_tracker(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from capslab.train.report import MetricsLog
    from capslab_plugins.loggers.mlflow import MLflowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    for name, error in (("fails", RuntimeError), ("interrupted", KeyboardInterrupt)):
        (tmp_path / name).mkdir()
        logger = MLflowLogger(tmp_path / name, tracking_uri=uri)
        with pytest.raises(error), MetricsLog(tmp_path / name / "metrics.jsonl", loggers=[logger]) as log:
            log.write({"kind": "train", "step": 1, "loss": 2.0, "test_error@affnist": 0.5})
            raise error
        status = MlflowClient(uri).get_run(logger.run_id).info.status
        assert status == {"fails": "FAILED", "interrupted": "KILLED"}[name]
    keys = set(MlflowClient(uri).get_run(logger.run_id).data.metrics)
    assert keys == {"train/loss", "train/test_error_affnist"}  # '@' is not an MLflow key character


def wandb_records(path):
    """The records of an offline W&B run file: a LevelDB-style log (32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_holds_records_config_and_figure(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "r"
    res = run(
        "train", "recipes/quickstart.yaml", *TINY, "train.epochs=2", "loggers=[{name: wandb, mode: offline}]",
        "--run-dir", run_dir,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    (path,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = wandb_records(path)
    history = [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    evals = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    logged = [(int(h["_step"]), round(float(h["eval/test_error"]), 6)) for h in history if "eval/test_error" in h]
    assert logged == [(r["step"], round(r["test_error"], 6)) for r in evals]
    figures = [h.get("reconstructions/_type") for h in history if "eval/test_error" in h]
    assert figures == ['"image-file"'] * len(evals)  # the figure with each evaluation
    config = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    keys = {item.key for c in config for item in c.update}
    assert {"routing", "train", "model"} <= keys
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]
