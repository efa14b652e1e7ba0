"""The trainer: exact resume, safetensors checkpoints (atomic, keep-N, corrupt), schedules, diagnostics."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from capslab.errors import CheckpointError
from capslab.recipe import SchedulerConfig, parse_recipe
from capslab.train import checkpoint as ckpt
from capslab.train import lr_at, train
from capslab.train.report import read_metrics
from capslab.train.state import load_checkpoint_model


def tiny(routing="dynamic", **train_overrides):
    """A small CapsNet on 96 real mnist5k digits: 3 steps per epoch, a few seconds for 4 epochs."""
    return parse_recipe(
        {
            "data": {"name": "mnist5k"},
            "model": {"name": "capsnet", "conv_channels": 16, "primary_types": 4, "decoder_hidden": [32, 64]},
            "routing": {"name": routing},
            "scheduler": {"name": "exponential", "gamma": 0.5, "every": 4},
            "train": {
                "epochs": 4,
                "batch_size": 32,
                "limit_train": 96,
                "limit_test": 50,
                "shift": 2,
                "device": "cpu",
                "log_every": 2,
                **train_overrides,
            },
            "checkpoint": {"keep": 2},
            "diagnostics": True,
        }
    )


def weights(run_dir):
    with safe_open(str(ckpt.resolve_checkpoint(run_dir) / ckpt.MODEL_FILE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def evals(run_dir):
    timing = ("img_per_s", "epoch_s", "elapsed_s")
    return [
        {k: v for k, v in r.items() if k not in timing}
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r["kind"] == "eval"
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """4 epochs in one go (shared by the tests that only read a finished run)."""
    run = tmp_path_factory.mktemp("straight")
    train(tiny(), run)
    return run


@pytest.mark.parametrize("routing, epochs", [("dynamic", 4), ("random", 2)])  # random: torch's global RNG
def test_resumed_halfway_equals_straight(tmp_path, straight, routing, epochs):
    """dynamic: 2 epochs + resume + 2 epochs give the weights of 4 epochs in one go, bit for bit."""
    if routing == "dynamic":
        a = straight
    else:
        a = tmp_path / "a"
        train(tiny(routing, epochs=epochs), a)
    b = tmp_path / "b"
    train(tiny(routing, epochs=epochs // 2), b)
    last = train(tiny(routing, epochs=epochs), b, resume=ckpt.resolve_checkpoint(b))
    assert last["epoch"] == epochs and last["step"] == 3 * epochs
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert evals(a) == evals(b)  # same losses, accuracies and diagnostics, epoch by epoch


def test_run_dir_holds_recipe_metrics_figure_and_last_n_checkpoints(straight):
    assert (straight / "recipe.yaml").is_file() and (straight / "reconstructions.png").stat().st_size > 1000
    steps = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert steps == ["latest", "step-00000009", "step-00000012"]  # keep: 2
    assert (straight / "checkpoints" / "latest").read_text().strip() == "step-00000012"
    records = read_metrics(straight / "metrics.jsonl")
    # every log_every (2) steps, and at the end of each 3-step epoch (a window never spans two epochs)
    assert [r["step"] for r in records if r["kind"] == "train"] == [2, 3, 4, 6, 8, 9, 10, 12]
    assert [r["epoch"] for r in records if r["kind"] == "eval"] == [1, 2, 3, 4]
    assert records[-1]["lr"] == pytest.approx(1e-3 * 0.5 ** (11 / 4))  # the lr of step 12 (0-based 11)


def test_checkpoint_metadata_and_optimizer_state_by_parameter_name(straight):
    step_dir = ckpt.resolve_checkpoint(straight)
    _, meta = ckpt.read_file(step_dir / ckpt.MODEL_FILE)
    assert meta["step"] == 12 and meta["epoch"] == 4 and meta["format_version"] == ckpt.FORMAT_VERSION
    assert meta["recipe"]["routing"]["name"] == "dynamic" and "capslab" in meta["plugins"]["routing"]
    assert meta["metrics"]["test_accuracy"] == read_metrics(straight / "metrics.jsonl")[-1]["test_accuracy"]
    tensors, state = ckpt.read_file(step_dir / ckpt.STATE_FILE)
    assert {
        "optimizer.conv1.weight.exp_avg",
        "optimizer.caps.weight.exp_avg_sq",
        "rng.torch",
        "rng.data",
        "rng.numpy",
    } <= set(tensors)
    assert state["counters"]["step"] == 12 and state["optimizer"]["groups"][0]["params"][0] == "conv1.weight"
    model, recipe, _ = load_checkpoint_model(straight, torch.device("cpu"))
    assert torch.equal(model.conv1.weight, weights(straight)["conv1.weight"]) and not model.training
    assert recipe.model.params["conv_channels"] == 16


def test_diagnostics_are_recorded_at_each_evaluation(straight):
    r = read_metrics(straight / "metrics.jsonl")[-1]
    assert len(r["routing_entropy"]) == len(r["routing_logit_change"]) == 3  # dynamic: 3 iterations
    assert r["routing_entropy"][0] == pytest.approx(math.log(10), abs=1e-4)  # uniform coupling at first
    assert all(0 < e <= math.log(10) + 1e-6 for e in r["routing_entropy"])
    assert 0 <= r["routing_to_prediction"] <= 1 and all(d > 0 for d in r["routing_logit_change"])


def test_resume_with_a_different_routing_names_the_mismatch(straight, tmp_path):
    recipe = parse_recipe({**tiny().to_dict(), "routing": {"name": "dynamic", "iterations": 2}})
    with pytest.raises(CheckpointError, match=r"routing\.iterations \(checkpoint 3, recipe 2\)"):
        train(recipe, tmp_path, resume=ckpt.resolve_checkpoint(straight))
    recipe = parse_recipe({**tiny().to_dict(), "model": {**tiny().model.as_dict(), "conv_channels": 8}})
    with pytest.raises(CheckpointError, match=r"model\.conv_channels \(checkpoint 16, recipe 8\)"):
        train(recipe, tmp_path, resume=ckpt.resolve_checkpoint(straight))


def _save(root, step, keep=3):
    return ckpt.save_checkpoint(
        root,
        step,
        {"w": torch.full((2,), float(step))},
        {"format_version": 1, "step": step},
        {},
        {"format_version": 1},
        keep,
    )


def test_checkpoints_are_written_atomically_and_pruned(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _save(root, step, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000003", "step-00000004"]

    real_save = ckpt._save

    def crash_on_state_file(tensors, path, meta):  # the process dies between the two files
        if path.name == ckpt.STATE_FILE:
            raise KeyboardInterrupt
        real_save(tensors, path, meta)

    monkeypatch.setattr(ckpt, "_save", crash_on_state_file)
    with pytest.raises(KeyboardInterrupt):
        _save(root, 5, keep=2)
    assert ckpt.resolve_checkpoint(root).name == "step-00000004"  # the half-written one is invisible
    assert not (root / "step-00000005").exists()
    monkeypatch.setattr(ckpt, "_save", real_save)
    _save(root, 5, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000004", "step-00000005"]  # tmp cleaned


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bad_json", "missing"])
def test_a_corrupt_or_missing_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    step_dir = _save(tmp_path / "checkpoints", 7)
    path = step_dir / ckpt.MODEL_FILE
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a safetensors file at all" * 3)
    elif damage == "bad_json":
        header = json.dumps({"__metadata__": {"format_version": "{oops"}}).encode()
        path.write_bytes(len(header).to_bytes(8, "little") + header)
    else:
        path.unlink()
    with pytest.raises(CheckpointError) as info:
        if damage == "missing":
            ckpt.resolve_checkpoint(tmp_path)
        ckpt.read_file(path)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "checkpoints") in msg


def test_learning_rate_schedules():
    exp = SchedulerConfig(name="exponential", gamma=0.96, every=2000)
    assert lr_at(0, 1e-3, exp, 100) == 1e-3
    assert lr_at(2000, 1e-3, exp, 100) == pytest.approx(0.96e-3)
    assert lr_at(1000, 1e-3, exp, 100) == pytest.approx(1e-3 * 0.96**0.5)  # smooth, not a staircase
    assert lr_at(10**7, 1e-3, exp, 100) == 1e-6  # the official floor
    cos = SchedulerConfig(name="cosine", min_lr=0.0, warmup_steps=10)
    assert lr_at(0, 1.0, cos, 100) == pytest.approx(0.1)  # warm-up: (0 + 1) / 10
    assert lr_at(50, 1.0, cos, 100) == pytest.approx(0.5) and lr_at(100, 1.0, cos, 100) == pytest.approx(0.0)
    assert lr_at(12345, 0.3, SchedulerConfig(name="none"), 100) == 0.3


def test_diagnostics_from_a_routing_that_reports_none_warn_once_and_log_nothing():
    import warnings

    import capslab
    from capslab.data.base import Split
    from capslab.train.diagnostics import RoutingStats
    from capslab.train.evaluate import evaluate

    class Quiet(capslab.Routing):  # returns no diagnostics, even when asked
        name = "quiet_for_test"

        def route(self, votes, activations, poses, iterations, diagnostics):
            v = votes.mean(1)
            return capslab.RoutingResult(v, v.norm(dim=-1).clamp(max=1))

    model = capslab.build_model(
        {"name": "capsnet", "conv_channels": 4, "primary_types": 2, "decoder": False}, capslab.DataInfo(1, 28, 28, 10)
    )
    spec = model.caps.routing.spec
    model.caps.routing = Quiet(spec)
    data = Split(torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8), torch.arange(6) % 10)
    RoutingStats.warned.discard("quiet_for_test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = evaluate(model, data, device=torch.device("cpu"), batch_size=3, diagnostics=True)
        evaluate(model, data, device=torch.device("cpu"), batch_size=3, diagnostics=True)
    assert not any(k.startswith("routing_") for k in first), first  # no misleading routing_to_prediction: 0.0
    messages = [str(w.message) for w in caught if "quiet_for_test" in str(w.message)]
    assert len(messages) == 1 and "returned no diagnostics" in messages[0]


def test_a_run_shorter_than_log_every_still_logs_each_epoch(tmp_path):
    train(tiny(epochs=2, log_every=1000), tmp_path)  # 3 steps per epoch
    trains = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in trains] == [3, 6]  # one record at each epoch's end
    assert all(math.isfinite(r["loss"]) for r in trains)
