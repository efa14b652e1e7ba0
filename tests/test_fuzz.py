"""A recipe fuzzer: mutations of every shipped recipe and hostile YAML constructs, through ``capslab validate``.
Whatever the input, the command exits 0, or 2 with ``error:`` lines and no traceback, in bounded memory."""

import resource
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from typer.testing import CliRunner

from capslab.cli.main import app
from capslab.recipe import read_yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if p.parent.name != "compare")

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(min_value=-5, max_value=10**6), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
    st.sampled_from(["dynamic", "em", "capsnet", "mnist5k", "margin", "sabour", "auto", "cuda:7", "..", "/"]),
)

HOSTILE = [
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh")),
    "seed: " + "[" * 2000 + "]" * 2000 + "\n",
    "train: !!python/object:os.system {}\n",  # a tag builds nothing: an empty train section, valid
    "train: {<<: {epochs: 1}, batch_size: 8}\n",  # a merge key: valid
    "data: *missing\n",
    "- just\n- a list\n",
    "\t bad: indentation\n",
    "seed: 1\nseed: 2\n",
]


def mutate(data, path, action, value):
    """Apply one mutation at ``path`` (a list of indices into the nested keys) of a recipe mapping."""
    node = data
    for i in path[:-1]:
        if not isinstance(node, dict) or not node:
            break
        key = sorted(node, key=str)[i % len(node)]
        if not isinstance(node[key], dict):
            break
        node = node[key]
    if not isinstance(node, dict):
        return data
    keys = sorted(node, key=str)
    key = keys[path[-1] % len(keys)] if keys else "x"
    if action == "set":
        node[key] = value
    elif action == "delete":
        node.pop(key, None)
    else:
        node[f"{key}_typo"] = value
    return data


def validate_text(tmp_path, text: str):
    path = tmp_path / "fuzzed.yaml"
    path.write_text(text)
    return CliRunner().invoke(app, ["validate", str(path)])


def check(result):
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines and all(line.startswith("error: ") for line in lines), result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    recipe=st.sampled_from(RECIPES),
    path=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=3),
    action=st.sampled_from(["set", "delete", "add"]),
    value=VALUES,
)
def test_mutated_recipes_fail_in_one_line_or_pass(tmp_path, recipe, path, action, value):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = mutate(read_yaml(recipe)[0], path, action, value)
    stream = __import__("io").StringIO()
    yaml = YAML()
    yaml.allow_unicode = True
    try:
        yaml.dump(data, stream)
    except Exception:  # a value ruamel cannot write (e.g. some surrogates): not a recipe anyone can write either
        return
    check(validate_text(tmp_path, stream.getvalue()))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: under 1 GB more


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_yaml_fails_in_one_line(tmp_path, text):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = validate_text(tmp_path, text)
    check(result)
    assert result.exit_code == (0 if "python/object" in text or "<<" in text else 2), result.output
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000
