"""The capslab command: one-line errors with exit code 2, validate, plugins, and a tiny real run."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import capslab
from capslab.cli.main import app
from capslab.data import write_idx

TINY = [
    "model.conv_channels=16",
    "model.primary_types=4",
    "model.decoder_hidden=[32, 64]",
    "train.limit_train=64",
    "train.limit_test=20",
    "train.batch_size=32",
    "train.device=cpu",
]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0].removeprefix("error: ")


@pytest.fixture
def bad_recipe(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("# typo below\noptimizer: {name: adam, lrr: 1e-3}\n")
    return path


def test_bad_key_is_one_line_with_did_you_mean(bad_recipe):
    assert (
        one_error_line(run("validate", bad_recipe))
        == f"{bad_recipe}:2:25: optimizer.lrr: unknown key; did you mean 'lr'?"
    )
    assert (
        one_error_line(run("train", bad_recipe)) == f"{bad_recipe}:2:25: optimizer.lrr: unknown key; did you mean 'lr'?"
    )


def test_unknown_plugin_name_is_one_line_with_did_you_mean():
    msg = one_error_line(run("validate", "quickstart", "routing.name=dynamc"))
    assert msg.startswith("<override>: routing.name: unknown routing 'dynamc'; did you mean 'dynamic'?; known: ")


def test_missing_recipe_file(tmp_path):
    msg = one_error_line(run("train", tmp_path / "nope.yaml"))
    assert msg.startswith(f"{tmp_path / 'nope.yaml'}: recipe file not found")


def test_every_problem_is_listed_one_per_line(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("seedd: 1\ntrain: {epochs: 0}\n")
    result = run("validate", path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {path}:1:1: seedd: unknown key; did you mean 'seed'?",
        f"error: {path}:2:9: train.epochs: Input should be greater than or equal to 1 (got 0)",
    ]


def test_validate_reports_the_model_and_shows_the_resolved_recipe():
    result = run("validate", "mnist", "--show")  # the paper's setup: no data is read, nothing downloaded
    assert result.exit_code == 0, result.output
    assert "OK: capsnet (8.22M parameters) with dynamic routing (3 iterations) on mnist," in result.stdout
    assert "leaky: false" in result.stdout  # a plugin default, filled in


def test_plugins_table_lists_kind_name_plugin_version():
    result = run("plugins")
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if " dynamic " in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][:3] == ["routing", "dynamic", "routing.dynamic"]
    for name in ("capsnet", "mnist5k", "margin", "sabour"):
        assert f" {name} " in result.stdout


def test_tiny_train_then_eval_inspect_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    result = run("train", "quickstart", *TINY, "train.epochs=1", "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "epoch 1/1" in result.stdout and "done: test accuracy" in result.stdout
    assert {"recipe.yaml", "metrics.jsonl", "reconstructions.png", "checkpoints"} <= {p.name for p in run_dir.iterdir()}

    result = run("eval", run_dir, "--limit", 100)
    assert result.exit_code == 0, result.output
    assert "(step 2, epoch 1) on mnist5k test (100 examples): accuracy" in result.stdout
    # the same 100 digits as MNIST IDX files in a directory of the user's: the same accuracy
    digits = capslab.build_dataset("mnist5k").load("test")
    (tmp_path / "idx").mkdir()
    write_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz", digits.images[:100, 0].numpy())
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte", digits.labels[:100].numpy().astype(np.uint8))
    idx = run("eval", run_dir, "--dataset", "mnist", "--data-dir", tmp_path / "idx")
    assert idx.exit_code == 0, idx.output
    assert "on mnist test (100 examples)" in idx.stdout
    assert idx.stdout.split("accuracy")[1] == result.stdout.split("accuracy")[1]

    result = run("inspect", run_dir)
    assert result.exit_code == 0, result.output
    assert (
        "step 2, epoch 1" in result.stdout and "caps.weight" in result.stdout and "conv_channels: 16" in result.stdout
    )

    assert "already holds a run" in one_error_line(run("train", "quickstart", *TINY, "--run-dir", run_dir))
    msg = one_error_line(run("train", "routing.iterations=2", "--resume", run_dir))
    assert "routing.iterations (checkpoint 3, recipe 2)" in msg
    result = run("train", "train.epochs=2", "--resume", run_dir)  # the run's own recipe, extended
    assert result.exit_code == 0, result.output
    assert "epoch 2/2  step 4" in result.stdout


def test_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path):
    step_dir = tmp_path / "checkpoints" / "step-00000001"
    step_dir.mkdir(parents=True)
    (step_dir / "model.safetensors").write_bytes(b"garbage" * 10)
    (tmp_path / "checkpoints" / "latest").write_text("step-00000001\n")
    for command in ("eval", "inspect"):
        msg = one_error_line(run(command, tmp_path))
        assert msg.startswith(f"{step_dir / 'model.safetensors'}: corrupt or not a capslab safetensors checkpoint")
    assert "no checkpoint here" in one_error_line(run("eval", tmp_path / "checkpoints" / ".." / ".."))


def test_console_script_exits_2_without_traceback(bad_recipe):
    script = shutil.which("capslab")
    cmd = [script] if script else [sys.executable, "-c", "from capslab.cli.main import main; main()"]
    res = subprocess.run([*cmd, "validate", str(bad_recipe)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr


def test_capslab_debug_lets_the_traceback_through(bad_recipe, monkeypatch):
    monkeypatch.setenv("CAPSLAB_DEBUG", "1")
    result = run("validate", bad_recipe)
    assert result.exit_code == 1 and type(result.exception).__name__ == "RecipeError"


def test_tables_wrap_on_a_narrow_terminal_instead_of_cutting_values():
    result = CliRunner().invoke(app, ["plugins"], env={"COLUMNS": "44"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    cells = "".join(line.split("│")[2].strip() for line in result.output.splitlines() if line.count("│") >= 4)
    assert "inverted_dot_product" in cells and "variational_bayes" in cells  # every name whole, folded over lines


# ------------------------------------------------------------ valid on paper, absurd in practice
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.decoder_hidden=[-5, 0]", "greater than or equal to 1"),
        ("model.conv_channels=100000000", "GiB to train"),
        ("train.shift=1000000", "moves every 28x28 image out of frame"),
        ("train.device=cuda:99", "cuda:99"),
        ("train.threads=100000", "less than or equal to 1024"),
        ("seed=123456789012345678901234567890", "less than 9223372036854775808"),
    ],
)
def test_absurd_settings_are_one_line_errors(override, message):
    res = run("validate", "recipes/quickstart.yaml", override)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_out_of_memory_in_training_is_one_line(tmp_path, monkeypatch):
    import capslab.train.trainer as trainer

    def alloc_fails(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 26041000000 bytes."
        )

    monkeypatch.setattr(trainer, "make_model", alloc_fails)
    res = run("train", "recipes/quickstart.yaml", *TINY, "--run-dir", tmp_path / "r")
    assert res.exit_code == 2 and res.output.count("\n") <= 2 and "out of memory" in res.output
    assert "smaller train.batch_size" in res.output and "Traceback" not in res.output
