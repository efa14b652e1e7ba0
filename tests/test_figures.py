"""capslab figures: dimension perturbations, routing per iteration, reconstructions; the error paths."""

import json

import pytest
import torch
from matplotlib.image import imread
from typer.testing import CliRunner

import capslab
from capslab.analysis import decoder_of, perturb_dimensions, perturbation_values, pick_digits, routing_iterations
from capslab.analysis.perturb import class_poses
from capslab.cli.main import app
from capslab.recipe import find_recipe, load_recipe
from capslab.train import train
from capslab.train.data import load_split, to_float
from capslab.train.report import read_metrics
from capslab.train.setup import make_dataset
from capslab.train.state import load_checkpoint_model

TINY = [
    "train.epochs=1",
    "train.limit_train=64",
    "train.limit_test=32",
    "train.batch_size=32",
    "train.device=cpu",
    "model.conv_channels=8",
    "model.primary_types=2",
    "model.decoder_hidden=[32, 64]",
    "diagnostics=true",
]


def run(*args):
    return CliRunner().invoke(app, ["figures", *map(str, args)])


def one_error_line(result):
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def trained(tmp_path_factory, name, *overrides):
    run_dir = tmp_path_factory.mktemp(name)
    train(load_recipe(find_recipe("quickstart"), [*TINY, *overrides]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def capsnet_run(tmp_path_factory):
    return trained(tmp_path_factory, "capsnet")


@pytest.fixture(scope="module")
def figures(capsnet_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    result = run(capsnet_run, "--out", out, "--iterations", 4)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_figure_is_written_and_shows_something(figures):
    out, output = figures
    perturbations = sorted(out.glob("perturbations_test*_capsule*.png"))
    assert len(perturbations) == 10  # the first test digit of each class (32 interleaved digits hold all 10)
    for png in [
        out / "reconstructions.png",
        out / "routing_training.png",
        out / "routing_iterations.png",
        out / "routing_convergence.png",
        out / "routing_convergence_training.png",
        *perturbations,
    ]:
        pixels = imread(png)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100, png
        assert pixels[..., :3].std() > 0.01, png  # not a blank canvas
    assert "skipped" not in output and "written to" in output


def test_routing_sweep_reports_k_iterations_for_each_k(figures, capsnet_run):
    out, output = figures
    numbers = json.loads((out / "routing_iterations.json").read_text())
    rows = numbers["by_iterations"]
    assert [r["iterations"] for r in rows] == [1, 2, 3, 4] and numbers["trained_iterations"] == 3
    longest = numbers["logit_change"]
    assert longest == rows[-1]["routing_logit_change"] and len(longest) == 4
    for r in rows:  # routed with k iterations: k statistics, and the first k of routing with 4 (same loop)
        assert len(r["routing_logit_change"]) == len(r["routing_entropy"]) == r["iterations"]
        assert r["routing_logit_change"] == pytest.approx(longest[: r["iterations"]], rel=1e-4)
        assert all(v > 0 for v in r["routing_logit_change"])
    assert numbers["examples"] == 32  # the run's train.limit_test
    # the statistics that vanish at convergence: one per iteration from the second on; the paper's is the
    # second difference of b, which for dynamic routing is |u_hat . (v^(r) - v^(r-1))| <= |u_hat| ||delta v||
    assert numbers["paper_statistic"] == "logit_change2"
    for key in ("logit_change2", "coupling_change", "pose_change"):
        assert len(numbers[key]) == 3 and all(v > 0 for v in numbers[key]), key
        assert numbers[key] == rows[-1][f"routing_{key}"]
    second = numbers["logit_change2"]
    # mean |x - y| >= |mean |x| - mean |y||: the second difference bounds the change of mean |delta b| from below
    assert all(d >= abs(b - a) - 1e-6 for d, a, b in zip(second, longest, longest[1:]))
    assert numbers["falls_every_iteration"] == all(a > b for a, b in zip(second, second[1:]))
    assert "mean |Δb|" in output and "the paper's Fig. A.1" in output
    # the training figure reads the trainer's diagnostics: 3 iterations per evaluation
    evals = [r for r in read_metrics(capsnet_run / "metrics.jsonl") if r["kind"] == "eval"]
    assert [len(r["routing_logit_change"]) for r in evals] == [3]
    assert [len(r["routing_logit_change2"]) for r in evals] == [len(r["routing_pose_change"]) for r in evals] == [2]


def test_routing_iterations_passes_k_to_every_routing_and_restores_it():
    info = capslab.DataInfo(1, 28, 28, 10)
    model = capslab.build_model(
        {"name": "capsnet", "conv_channels": 4, "primary_types": 2, "decoder": False},
        info,
        {"name": "dynamic", "iterations": 3},
    ).eval()
    images = torch.rand(2, 1, 28, 28)
    with routing_iterations(model, 5) as found:
        assert len(found) == 1
        assert len(model(images, diagnostics=True).routing.logit_change) == 5
    assert "forward" not in found[0].__dict__
    assert len(model(images, diagnostics=True).routing.logit_change) == 3


def test_perturbed_decodings_differ_across_the_grid_and_zero_is_the_reconstruction(capsnet_run):
    model, recipe, _ = load_checkpoint_model(capsnet_run, torch.device("cpu"))
    test = load_split(make_dataset(recipe), "test", 32)
    index = pick_digits(test.labels, 10)
    assert sorted(test.labels[index].tolist()) == list(range(10))
    poses, predicted, _ = class_poses(model, test, index, torch.device("cpu"))
    values = perturbation_values(0.25, 0.05)
    assert torch.allclose(values, torch.arange(-5, 6) * 0.05, atol=1e-6)
    images = perturb_dimensions(decoder_of(model), poses, predicted, values)
    assert images.shape == (10, 16, 11, 1, 28, 28)
    # every dimension's row changes along the perturbations, and the rows differ from each other
    along_values = (images - images[:, :, 5:6]).abs().flatten(3).amax(-1)  # (n, D, V) vs the unperturbed column
    assert (along_values[:, :, [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]] > 1e-6).all()
    assert (images[:, 0, 0] - images[:, 1, 0]).abs().amax() > 1e-6
    # delta 0 decodes exactly what the model's own forward reconstructs (same masking by the prediction)
    with torch.no_grad():
        own = model(to_float(test.images[index])).reconstruction  # (n, 1, 28, 28)
    for d in range(16):
        assert torch.allclose(images[:, d, 5], own, atol=1e-6)


def test_perturbation_changes_exactly_one_dimension_of_the_chosen_capsule():
    J, D = 4, 3
    decoder = capslab.MaskedDecoder(J, D, (1, 5, 5), hidden=(8,)).eval()
    seen = {}
    decoder.register_forward_pre_hook(lambda m, args: seen.setdefault("poses", []).append(args[0].clone()))
    decoder.net.register_forward_pre_hook(lambda m, args: seen.setdefault("net", []).append(args[0].clone()))
    poses = torch.randn(2, J, D)
    classes = torch.tensor([2, 0])
    values = perturbation_values(0.2, 0.1)  # -0.2 -0.1 0 0.1 0.2
    images = perturb_dimensions(decoder, poses, classes, values)
    assert images.shape == (2, D, 5, 1, 5, 5)
    for i, k in enumerate(classes.tolist()):
        given = seen["poses"][i].view(D, 5, J, D)  # what the decoder got for digit i: row (d, v)
        masked = seen["net"][i].view(D, 5, J, D)  # after its mask: the layers' input
        for d in range(D):
            for v, delta in enumerate(values.tolist()):
                expected = poses[i].clone()
                expected[k, d] += delta  # one dimension of one capsule
                assert torch.equal(given[d, v], expected)
                only_k = torch.zeros(J, D)
                only_k[k] = expected[k]  # every other class capsule masked to zero
                assert torch.equal(masked[d, v], only_k)


def test_model_without_decoder_is_one_line_error_and_routing_still_drawn(tmp_path_factory):
    run_dir = trained(tmp_path_factory, "nodecoder", "model.decoder=false", "reconstruction.enabled=false")
    msg = one_error_line(run(run_dir, "--only", "perturbations"))
    assert msg == (
        "error: capsnet: no dimension perturbations: it was trained with model.decoder: false "
        "(they decode perturbed class capsules)"
    )
    result = run(run_dir, "--iterations", 2)  # by default what the model supports, the rest skipped with why
    assert result.exit_code == 0, result.output
    assert "skipped perturbations: capsnet: no dimension perturbations" in result.output
    assert (run_dir / "figures" / "routing_iterations.png").is_file()
    assert not list((run_dir / "figures").glob("perturbations_*"))


def test_model_with_nothing_to_draw_and_bad_options_are_one_line_errors(tmp_path_factory, capsnet_run):
    cnn = trained(
        tmp_path_factory, "cnn", "model={name: baseline_cnn, channels: [4], hidden: [8]}", "loss.name=cross_entropy"
    )
    msg = one_error_line(run(cnn))
    assert "baseline_cnn: no dimension perturbations: it has no decoder" in msg
    assert "baseline_cnn: no routing analysis: it has no routing layer" in msg
    assert "unknown analysis" in one_error_line(run(capsnet_run, "--only", "saliency"))
    assert "does not divide" in one_error_line(run(capsnet_run, "--perturb-step", "0.07"))
    assert "no such file or directory" in one_error_line(run(capsnet_run / "nothing"))
