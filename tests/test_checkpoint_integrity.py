"""Checkpoints that are damaged, converted or cannot be written: checksums, fallback to the newest intact one,
dtype and missing-recipe errors, a full disk (one line, nothing left behind, the previous checkpoint intact)."""

import errno
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_cli import TINY, run

from capslab.train import checkpoint as ckpt

STEPS = ["train.limit_train=64", "train.batch_size=32", "reconstruction.enabled=false", "checkpoint.keep=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "r"
    res = run("train", "recipes/quickstart.yaml", *TINY, *STEPS, "train.epochs=2", "--run-dir", run_dir)
    assert res.exit_code == 0, res.output
    return run_dir


def copy_run(trained, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def steps(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


def rewrite(model_file, change):
    """Rewrite a safetensors file with ``change(tensors, meta)`` applied (the checksums kept as they were)."""
    with safe_open(str(model_file), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors, meta)
    save_file(tensors, str(model_file), metadata=meta)


def test_a_flipped_byte_is_caught_by_the_checksum(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    model_file = run_dir / "checkpoints" / steps(run_dir)[-1] / ckpt.MODEL_FILE
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's bytes: still a valid safetensors file
    model_file.write_bytes(bytes(data))
    res = run("eval", model_file)
    assert res.exit_code == 2 and "does not match the checksum" in res.output, res.output


def test_resume_falls_back_to_the_newest_intact_checkpoint(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    newest, older = steps(run_dir)[-1], steps(run_dir)[-2]
    state = run_dir / "checkpoints" / newest / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # truncated by a crash of the disk, say
    with pytest.warns(UserWarning, match=f"{newest}/trainer_state.safetensors: corrupt.*; using {older}, the newest"):
        res = run("train", "--resume", run_dir, "train.epochs=3")
    assert res.exit_code == 0, res.output
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["kind"] == "eval"] == [1, 2, 3]  # epoch 2 redone from epoch 1's state


def test_a_missing_latest_pointer_falls_back_with_a_warning(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    (run_dir / "checkpoints" / ckpt.LATEST).unlink()
    with pytest.warns(UserWarning, match="checkpoints/latest is missing; using step-"):
        found = ckpt.resolve_checkpoint(run_dir)
    assert found.name == steps(run_dir)[-1]


def test_converted_weights_and_foreign_files_are_named(trained, tmp_path):
    run_dir = copy_run(trained, tmp_path)
    model_file = run_dir / "checkpoints" / steps(run_dir)[-1] / ckpt.MODEL_FILE

    def to_double(tensors, meta):
        name = next(k for k, t in tensors.items() if t.is_floating_point())
        tensors[name] = tensors[name].double()
        digests = json.loads(meta["tensor_sha256"])
        digests[name] = ckpt.tensor_digest(tensors[name])
        meta["tensor_sha256"] = json.dumps(digests)

    rewrite(model_file, to_double)
    res = run("eval", model_file)
    assert res.exit_code == 2 and "is stored as torch.float64, the model's is torch.float32" in res.output

    foreign = tmp_path / "foreign" / ckpt.MODEL_FILE
    foreign.parent.mkdir()
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format_version": "1"})
    res = run("eval", foreign)
    assert res.exit_code == 2 and "no recipe in its metadata" in res.output


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    run_dir = copy_run(trained, tmp_path)
    before = steps(run_dir)
    real = ckpt.save_file

    def full(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)  # a partial file is there when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    res = run("train", "--resume", run_dir, "train.epochs=3")
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "MiB are free" in errors[0]
    assert "Traceback" not in res.output
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # no temporary left behind
    assert steps(run_dir) == before and ckpt.intact(run_dir / "checkpoints" / before[-1]) is None
