"""Divergence is caught on the step it happens: exit 1 and one line naming the step, the epoch and the last finite
checkpoint (kept); skip_batch drops non-finite updates; metrics.jsonl stays JSON; NaN weights never load."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli import TINY, run

import capslab.train.trainer as trainer
from capslab.train import checkpoint as ckpt
from capslab.train.report import MetricsLog

STEPS = ["train.limit_train=64", "train.batch_size=32", "reconstruction.enabled=false"]  # 2 steps an epoch


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]  # strict JSON


def poison(monkeypatch, bad_calls):
    """From the training loop's n-th loss on (1-based, in ``bad_calls``), the loss is NaN."""
    calls = []
    real = trainer.total_loss

    def total_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(1)
        return loss * math.nan if len(calls) in bad_calls else loss

    monkeypatch.setattr(trainer, "total_loss", total_loss)


def test_an_exploding_model_stops_on_its_first_step_with_exit_1(tmp_path):
    res = run(
        "train",
        "recipes/quickstart.yaml",
        *TINY,
        *STEPS,
        "train.epochs=2",
        "model.votes_init_std=1e30",
        "--run-dir",
        tmp_path / "r",
    )
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged at step 1, epoch 1" in errors[0] and "none yet" in errors[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "r" / "checkpoints").exists() or not any((tmp_path / "r" / "checkpoints").iterdir())


def test_a_divergence_mid_run_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    poison(monkeypatch, range(4, 100))  # epoch 1 (steps 1-2) and step 3 are fine; step 4 is NaN
    run_dir = tmp_path / "r"
    res = run("train", "recipes/quickstart.yaml", *TINY, *STEPS, "train.epochs=3", "--run-dir", run_dir)
    assert res.exit_code == 1, res.output
    line = next(line for line in res.output.splitlines() if line.startswith("error:"))
    assert "step 4, epoch 2: the loss is nan" in line and "step-00000002" in line, line
    assert [r["epoch"] for r in records(run_dir) if r["kind"] == "eval"] == [1]
    monkeypatch.undo()
    ok = run("eval", run_dir, "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["step"] == 2  # the finite checkpoint, intact


def test_skip_batch_drops_nonfinite_updates_and_stops_after_too_many(tmp_path, monkeypatch):
    poison(monkeypatch, {2, 3})
    run_dir = tmp_path / "skip"
    res = run(
        "train",
        "recipes/quickstart.yaml",
        *TINY,
        *STEPS,
        "train.epochs=3",
        "train.nonfinite=skip_batch",
        "--run-dir",
        run_dir,
    )
    assert res.exit_code == 0, res.output
    final = [r for r in records(run_dir) if r["kind"] == "eval"][-1]
    assert final["skipped_steps"] == 2 and final["step"] == 4  # 6 batches, 2 skipped
    monkeypatch.undo()
    poison(monkeypatch, range(1, 100))
    res = run(
        "train",
        "recipes/quickstart.yaml",
        *TINY,
        *STEPS,
        "train.epochs=3",
        "train.nonfinite=skip_batch",
        "train.max_skipped=3",
        "--run-dir",
        tmp_path / "stop",
    )
    assert res.exit_code == 1 and "3 steps in a row, train.max_skipped" in res.output


def test_metrics_stay_json_and_nan_weights_never_load(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write({"kind": "eval", "step": 1, "loss": math.nan, "acc": [1.0, math.inf]})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "kind": "eval",
        "step": 1,
        "loss": None,
        "acc": [1.0, None],
    }
    run_dir = tmp_path / "r"
    assert run("train", "recipes/quickstart.yaml", *TINY, *STEPS, "train.epochs=1", "--run-dir", run_dir).exit_code == 0
    model_file = next((run_dir / "checkpoints").glob("step-*")) / "model.safetensors"
    with safe_open(str(model_file), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], math.nan)
    digests = json.loads(meta["tensor_sha256"])  # a consistent file, as a diverged run elsewhere would write
    digests[name] = ckpt.tensor_digest(tensors[name])
    meta["tensor_sha256"] = json.dumps(digests)
    save_file(tensors, str(model_file), metadata=meta)
    res = run("eval", run_dir)
    assert res.exit_code == 2 and "NaN or infinite" in res.output and name in res.output


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_nonfinite_recipe_numbers_are_errors(value):
    res = run("validate", "recipes/quickstart.yaml", f"optimizer.lr={value}")
    assert res.exit_code == 2 and "finite number" in res.output
