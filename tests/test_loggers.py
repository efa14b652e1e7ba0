"""Loggers are a plugin kind: metrics.jsonl is always written, and the recipe's ``loggers`` add trackers; the
built-in TensorBoard logger's event file holds every record, the recipe and the reconstruction figure."""

import json

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
