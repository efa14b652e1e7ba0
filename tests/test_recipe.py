"""Recipes: YAML 1.2 loading, every problem at once with file:line:col, overrides, embedded recipes."""

import textwrap

import pytest

import capslab
from capslab.recipe import Recipe, RecipeError, dump_recipe, embedded_recipes, find_recipe, load_recipe, parse_override
from capslab.recipe.embedded import recipes_dir

MODELS = ", ".join(capslab.registry("model").names())


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


@pytest.mark.parametrize("name", ["quickstart", "mnist"])
def test_embedded_recipes_load_and_say_how_to_run_them(name):
    path = embedded_recipes()[name]
    first = path.read_text().splitlines()[:4]
    assert all(line.startswith("#") for line in first) and any("capslab train" in line for line in first)
    assert any("=" in line for line in first)  # shows an override
    r = load_recipe(path)
    assert isinstance(r.optimizer.lr, float) and r.optimizer.lr == 1e-3  # YAML 1.2: 1.0e-3 is a float
    assert r.routing.name == "dynamic" and r.routing.params["iterations"] == 3
    assert r.reconstruction.enabled and r.model.name == "capsnet"


def test_mnist_recipe_is_the_papers_setup():
    r = load_recipe(find_recipe("mnist"))
    assert (r.data.name, r.train.batch_size, r.train.shift) == ("mnist", 128, 2)
    assert (r.scheduler.name, r.scheduler.gamma, r.scheduler.every) == ("exponential", 0.96, 2000)


def test_default_recipe_is_the_quickstart_found_by_name():
    assert find_recipe(None) == find_recipe("quickstart") == recipes_dir() / "quickstart.yaml"
    with pytest.raises(RecipeError, match=r"quikstart: recipe file not found; did you mean 'quickstart'\?"):
        find_recipe("quikstart")


def test_every_problem_is_reported_at_once_with_line_column_and_did_you_mean(tmp_path):
    path = write(
        tmp_path,
        """\
        # a recipe with six mistakes
        seedd: 1
        model: {name: capsnett}
        routing: {name: dynamic, iteration: 3}
        optimizer:
          name: adam
          lrr: 1e-3
        train: {epochs: zero, device: gpu}
        """,
    )
    assert problems(path) == [
        f"{path}:2:1: seedd: unknown key; did you mean 'seed'?",
        f"{path}:3:9: model.name: unknown model 'capsnett'; did you mean 'capsnet'?; known: {MODELS}",
        f"{path}:4:26: routing.iteration: unknown key; did you mean 'iterations'?",
        f"{path}:7:3: optimizer.lrr: unknown key; did you mean 'lr'?",
        f"{path}:8:9: train.epochs: Input should be a valid integer, unable to parse string as an integer (got 'zero')",
        f"{path}:8:23: train.device: expected auto, cpu, cuda, cuda:N or mps (got 'gpu')",
    ]


def test_plugin_params_are_validated_by_the_plugin(tmp_path):
    path = write(tmp_path, "routing: {name: dynamic, iterations: 0}\nloss: {name: margin, lambda: -1}\n")
    assert problems(path) == [
        f"{path}:1:26: routing.iterations: Input should be greater than or equal to 1 (got 0)",
        f"{path}:2:22: loss.lambda: Input should be greater than or equal to 0 (got -1)",
    ]


def test_choices_get_did_you_mean_and_sections_must_be_mappings(tmp_path):
    path = write(tmp_path, "optimizer: {name: adamm}\ntrain: 3\n")
    assert problems(path) == [
        f"{path}:1:13: optimizer.name: Input should be 'adam' or 'sgd' (got 'adamm'); did you mean 'adam'?",
        f"{path}:2:1: train: expected a mapping of keys (got 3)",
    ]


def test_loss_for_probabilities_on_a_logits_model_is_an_error(tmp_path):
    path = write(tmp_path, "model: {name: baseline_cnn}\nloss: {name: margin}\n")
    assert problems(path) == [
        f"{path}:2:8: loss.name: loss 'margin' expects scores in [0, 1] but model "
        f"'baseline_cnn' outputs logits; use loss: cross_entropy"
    ]


@pytest.mark.parametrize(
    "text, where, what",
    [
        ("a: [1, 2\nb: 3\n", "2:2", "invalid YAML: expected ',' or ']', but got ':'"),
        ("seed: 1\nseed: 2\n", "2:1", 'invalid YAML: found duplicate key "seed" with value "2" (original value: "1")'),
        ("- 1\n- 2\n", "1:1", "a recipe is a mapping of sections (seed, data, model, ...), not list"),
    ],
)
def test_unreadable_yaml_is_one_line(tmp_path, text, where, what):
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:{where}: {what}"]


def test_missing_file_is_a_recipe_error(tmp_path):
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: recipe file not found"]


def test_yaml_12_values():
    assert parse_override("optimizer.lr=1e-3") == (("optimizer", "lr"), 0.001)
    assert parse_override("train.bf16=off") == (("train", "bf16"), "off")  # YAML 1.1 would say False
    assert parse_override("model.decoder_hidden=[256, 512]") == (("model", "decoder_hidden"), [256, 512])
    assert parse_override("train.limit_train=null") == (("train", "limit_train"), None)
    assert parse_override("routing={name: em, iterations: 2}") == (("routing",), {"name": "em", "iterations": 2})


def test_overrides_apply_and_are_validated_the_same_way():
    path = find_recipe("quickstart")
    r = load_recipe(path, ["train.epochs=2", "routing.iterations=1", "optimizer.lr=3e-3", "squash=efficient"])
    assert (r.train.epochs, r.routing.params["iterations"], r.optimizer.lr, r.squash.name) == (2, 1, 3e-3, "efficient")
    r = load_recipe(path, ["model=baseline_cnn", "model.channels=[8, 8]", "loss=cross_entropy"])  # a name, then params
    assert (
        r.model.name == "baseline_cnn"
        and r.model.params["channels"] == [8, 8]
        and "conv_channels" not in r.model.params
    )
    assert problems(path, ["train.epochs=0", "routing.iteratons=2", "model=capsnt", "epochs", "seed.x=1"]) == [
        "<override>: 'epochs': expected key.path=value, e.g. train.epochs=2",  # malformed ones first
        "<override>: seed.x: seed is 0, not a section with keys",
        "<override>: train.epochs: Input should be greater than or equal to 1 (got 0)",
        f"<override>: model.name: unknown model 'capsnt'; did you mean 'capsnet'?; known: {MODELS}",
        "<override>: routing.iteratons: unknown key; did you mean 'iterations'?",
    ]


def test_resolved_recipe_has_every_default_and_round_trips(tmp_path):
    r = load_recipe(find_recipe("quickstart"))
    assert r.routing.params["leaky"] is False and r.model.params["primary_dim"] == 8  # plugin defaults filled in
    dump_recipe(r, tmp_path / "resolved.yaml", header="resolved")
    assert (tmp_path / "resolved.yaml").read_text().startswith("# resolved\n")
    assert load_recipe(tmp_path / "resolved.yaml") == r


def test_empty_recipe_means_all_defaults(tmp_path):
    r = load_recipe(write(tmp_path, "# nothing\n"))
    assert r.to_dict() == Recipe().to_dict() | {
        k: r.to_dict()[k] for k in ("data", "model", "routing", "squash", "loss")
    }
    assert r.data.name == "mnist5k" and r.train.shift == 2


# ------------------------------------------------------------------------------------- hostile YAML
BOMB = "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, n in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi")
)


def test_an_alias_bomb_is_refused_in_one_line_without_expanding(tmp_path):
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RecipeError, match="expands to more than 100,000 values"):
        load_recipe(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no gigabytes of lols


def test_deep_nesting_and_merge_keys_and_directories(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(RecipeError, match="nested too deeply"):
        load_recipe(deep)
    merge = tmp_path / "merge.yaml"
    merge.write_text(
        "train: &t {epochs: 1, batch_size: 16}\ncheckpoint: {keep: 1}\ndata: {name: mnist5k}\n"
        "model:\n  <<: {name: capsnet, conv_channels: 16}\n  primary_types: 4\n"
    )
    recipe = load_recipe(merge)  # the merge is supported: its keys count as the map's own
    assert recipe.model.params["conv_channels"] == 16 and recipe.model.params["primary_types"] == 4
    with pytest.raises(RecipeError, match="is a directory, not a recipe file"):
        find_recipe(tmp_path)
