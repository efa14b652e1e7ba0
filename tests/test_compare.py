"""capslab compare: sweep expansion, validation of every run, mean ± std, resume, the CLI."""

import json
import math

import pytest
from typer.testing import CliRunner

from capslab.cli.main import app
from capslab.compare import aggregate, load_compare, markdown_table, run_compare
from capslab.recipe import RecipeError

TINY = [
    "train.epochs=1",
    "train.limit_train=32",
    "train.limit_test=20",
    "train.batch_size=16",
    "model.conv_channels=4",
    "model.primary_types=2",
    "train.log_every=1",
]


def write(tmp_path, text, name="cmp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_variants_times_grid_times_seeds(tmp_path):
    path = write(
        tmp_path,
        """
base: quickstart
variants:
  - {label: dyn}
  - {routing: max_min}
grid:
  routing.iterations: [1, 3]
seeds: [0, 1, 2]
""",
    )
    runs = load_compare(path)
    assert len(runs) == 2 * 2 * 3
    labels = sorted({r.variant for r in runs})
    assert labels == [
        "dyn, iterations=1",
        "dyn, iterations=3",
        "routing=max_min, iterations=1",
        "routing=max_min, iterations=3",
    ]
    r = next(r for r in runs if r.variant == "routing=max_min, iterations=3" and r.seed == 2)
    assert (r.recipe.routing.name, r.recipe.routing.params["iterations"], r.recipe.seed) == ("max_min", 3, 2)


def test_every_runs_recipe_is_validated_before_anything_runs(tmp_path):
    path = write(
        tmp_path,
        """
base: quickstart
variants:
  - {label: good}
  - {label: bad, routing.iteratons: 2}
  - {label: unknown, routing: dynamc}
""",
    )
    with pytest.raises(RecipeError) as err:
        load_compare(path)
    text = str(err.value)
    assert "iteratons" in text and "(variant 'bad')" in text
    assert "did you mean 'dynamic'" in text and "(variant 'unknown')" in text
    assert "good" not in text


def test_spec_errors_name_the_line(tmp_path):
    path = write(tmp_path, "base: quickstart\nseeds: [0]\ngrd: {}\n")
    with pytest.raises(RecipeError, match=r"cmp.yaml:3:1: grd: Extra inputs are not permitted"):
        load_compare(path)


def test_mean_and_sample_std_over_seeds():
    runs = [{"variant": "a", "seed": s, "test_error": e, "params": 10} for s, e in enumerate([1.0, 2.0, 4.0])]
    runs.append({"variant": "b", "seed": 0, "test_error": 3.0, "params": 5})
    a, b = aggregate(runs)
    assert a.mean["test_error"] == pytest.approx(7 / 3)
    assert a.std["test_error"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(b.std["test_error"]) and b.cell("test_error", "{:.2f}") == "3.00"
    assert "| a | 3 | 2.33 ± 1.53 |" in markdown_table([a, b])


def test_compare_runs_writes_results_and_resumes(tmp_path):
    path = write(
        tmp_path,
        "base: quickstart\nset: " + json.dumps(TINY) + "\nvariants: [{label: one, paper: '0.25'}]\nseeds: [0, 1]\n",
    )
    out = tmp_path / "out"
    paths = run_compare(load_compare(path), out, jobs=2)
    results = json.loads(paths["json"].read_text())
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    run = results["runs"][0]
    assert 0 <= run["test_error"] <= 100 and run["params"] > 0 and run["infer_img_s"] > 0 and run["peak_memory_mb"] > 0
    assert (out / "one" / "seed-0" / "metrics.jsonl").exists() and paths["errors_png"].stat().st_size > 0
    assert "| one | 2 | 0.25 |" in paths["md"].read_text()  # the published number beside the measured one
    before = (out / "one" / "seed-0" / "summary.json").stat().st_mtime_ns
    (out / "one" / "seed-1" / "summary.json").unlink()  # as if interrupted during seed 1
    run_compare(load_compare(path), out, jobs=1)
    assert (out / "one" / "seed-0" / "summary.json").stat().st_mtime_ns == before  # finished run skipped
    assert (out / "one" / "seed-1" / "summary.json").exists()
    # the same directory with different overrides: old results are never taken for the new runs
    changed = load_compare(path, ["train.limit_test=10"])
    assert all(r.recipe.train.limit_test == 10 for r in changed)
    run_compare(changed, out, jobs=1)
    assert (out / "one" / "seed-0" / "summary.json").stat().st_mtime_ns != before
    assert "limit_test: 10" in (out / "one" / "seed-0" / "recipe.yaml").read_text()


def test_cli_errors_exit_2_in_one_line(tmp_path):
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "missing.yaml: comparison recipe not found" in res.output
    path = write(tmp_path, "base: quickstart\nvariants: [{routing: dynamc}]\n")
    res = CliRunner().invoke(app, ["compare", str(path), "--dry-run"])
    assert res.exit_code == 2 and "did you mean 'dynamic'" in res.output and "Traceback" not in res.output


RECIPES = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes"


def test_shared_backbone_comparison_changes_only_the_routing_over_three_seeds():
    runs = load_compare(RECIPES / "compare" / "routing.yaml")
    assert sorted({r.seed for r in runs}) == [0, 1, 2]
    routings = {r.recipe.routing.name for r in runs}
    assert routings == {
        "dynamic",
        "uniform",
        "random",
        "max_min",
        "inverted_dot_product",
        "self_routing",
        "variational_bayes",
        "em",
        "self_attention",
    }
    rest = {
        json.dumps({k: v for k, v in r.recipe.to_dict().items() if k not in ("routing", "seed")}, sort_keys=True)
        for r in runs
    }
    assert len(rest) == 1, "variants differ beyond their routing"
    model = runs[0].recipe.model.params
    assert model["activations"] == "length"  # EM, VB and self-routing get the primary capsules' lengths


def test_paper_setting_comparison_pairs_each_routing_with_its_papers_setup():
    runs = {r.recipe.routing.name: r.recipe for r in load_compare(RECIPES / "compare" / "papers.yaml")}
    assert set(runs) == {
        "dynamic",
        "max_min",
        "em",
        "self_attention",
        "inverted_dot_product",
        "self_routing",
        "variational_bayes",
    }
    assert (runs["em"].model.name, runs["em"].loss.name) == ("matrix_capsnet", "spread")
    assert (runs["self_attention"].model.name, runs["self_attention"].squash.name) == ("efficient_capsnet", "efficient")
    assert (runs["inverted_dot_product"].routing.params["readout"], runs["inverted_dot_product"].loss.name) == (
        "linear",
        "cross_entropy",
    )
    assert (runs["self_routing"].model.params["activations"], runs["self_routing"].loss.name) == ("sigmoid", "nll")
    assert runs["variational_bayes"].loss.name == "cross_entropy"
    assert (
        runs["variational_bayes"].routing.params["batch_norm"] and runs["variational_bayes"].routing.params["pose_norm"]
    )


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_shipped_recipe_validates(path):
    from capslab.recipe import load_recipe

    if path.parent.name == "compare":
        assert load_compare(path)
    else:
        load_recipe(path)


def test_extra_test_sets_get_their_own_column():
    from capslab.compare.results import aggregate, markdown_table

    runs = [
        {"variant": "caps", "seed": s, "test_error": 1.0 + s, "test_error@affnist": 20.0 + 2 * s, "paper": "21"}
        for s in (0, 1)
    ]
    rows = aggregate(runs)
    assert rows[0].mean["test_error@affnist"] == pytest.approx(21.0)
    table = markdown_table(rows)
    assert "| variant | seeds | paper error % | test error % | affnist error % |" in table
    assert "| caps | 2 | 21 | 1.50 ± 0.71 | 21.00 ± 1.41 |" in table
    assert "different devices" not in table
    mixed = aggregate([{**runs[0], "device": "NVIDIA A100"}, {**runs[1], "variant": "b", "device": "Xeon (2 threads)"}])
    assert "Runs on different devices (NVIDIA A100; Xeon (2 threads)): the img/s" in markdown_table(mixed)


def test_a_typo_in_a_variant_is_placed_at_that_variant(tmp_path):
    path = write(
        tmp_path,
        "base: quickstart\nset:\n  - train.epochs=1\n  - train.bach_size=8\nvariants:\n"
        "  - {label: a, routing: {name: dynamic, iterashuns: 3}}\n  - {label: b, train.epohcs: 2}\n",
    )
    with pytest.raises(RecipeError) as err:
        load_compare(path)
    text = "\n".join(err.value.problems)
    assert f"{path}:6:5: routing.iterashuns: unknown key" in text
    assert f"{path}:7:5: train.epohcs: unknown key" in text
    assert f"{path}:4:5: train.bach_size: unknown key" in text and "<override>" not in text


def test_seeds_can_be_replaced_from_the_command_line(tmp_path):
    path = write(tmp_path, "base: quickstart\nvariants: [{label: a}, {label: b}]\nseeds: [0, 1, 2]\n")
    assert [r.seed for r in load_compare(path, seeds=[7])] == [7, 7]
    res = CliRunner().invoke(app, ["compare", str(path), "--seeds", "0,x", "--dry-run"])
    assert res.exit_code == 2 and "--seeds '0,x'" in res.output
