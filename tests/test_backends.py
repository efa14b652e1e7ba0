"""capslab.routing.backends: which implementation each built-in routing takes, the one switch, and the small
plugin contract that the speed paths no longer leak into."""

import pytest
import torch
from test_cli import TINY, run

import capslab
from capslab.routing import backends, kernel
from capslab.routing.backends import Backend, VotesLayout
from capslab_plugins.routing.dynamic import DynamicRouting

SPEC = capslab.RoutingSpec(in_caps=32, out_caps=10, pose_dim=16, in_pose_dim=8)  # the CapsNet class layer, small

# On the CPU in float32 without diagnostics: what a training step of each built-in routing runs.
EXPECTED = {
    "dynamic": Backend.KERNEL if kernel.available() else Backend.FUSED,
    "max_min": Backend.KERNEL,
    "uniform": Backend.FUSED,
    "random": Backend.FUSED,
    "em": Backend.REFERENCE,
    "variational_bayes": Backend.REFERENCE,
    "self_routing": Backend.REFERENCE,
    "self_attention": Backend.REFERENCE,
    "inverted_dot_product": Backend.REFERENCE,
}


def class_layer(name: str, squash: str | None = None):
    torch.manual_seed(0)
    routing = capslab.build_routing(name, SPEC, capslab.build_squash(squash) if squash else None)
    return capslab.ClassCapsules(SPEC.in_caps, SPEC.in_pose_dim, SPEC.out_caps, SPEC.pose_dim, routing)


def path_taken(layer, monkeypatch) -> Backend:
    """Run the layer once and report which implementation actually ran."""
    ran = []
    monkeypatch.setattr(kernel, "_route", lambda *a, route=kernel._route: ran.append(Backend.KERNEL) or route(*a))
    from capslab.routing import agreement

    fused = agreement.fused_agree
    monkeypatch.setattr(agreement, "fused_agree", lambda *a: ran.append(Backend.FUSED) or fused(*a))
    x = torch.randn(4, SPEC.in_caps, SPEC.in_pose_dim) * 0.3
    layer(x, torch.rand(4, SPEC.in_caps))
    return ran[0] if ran else Backend.REFERENCE


def test_every_builtin_routing_is_in_the_table():
    builtins = {e.name for e in capslab.registry("routing") if e.builtin}
    assert builtins == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_builtin_takes_its_backend_on_cpu(name, monkeypatch):
    layer = class_layer(name)
    assert path_taken(layer, monkeypatch) is EXPECTED[name]
    with backends.use("fused"):  # the compiled kernel switched off: the operator loop instead
        want = Backend.FUSED if EXPECTED[name] is not Backend.REFERENCE else Backend.REFERENCE
        assert path_taken(layer, monkeypatch) is want
    with backends.use("reference"):
        assert path_taken(layer, monkeypatch) is Backend.REFERENCE
        assert backends.votes_layout(layer.routing, torch.zeros(2, 32, 8)) is VotesLayout.BJID


def test_the_environment_variable_switches_and_a_bad_value_is_one_error(monkeypatch):
    layer = class_layer("dynamic")
    monkeypatch.setenv(backends.ENV, "reference")
    assert path_taken(layer, monkeypatch) is Backend.REFERENCE
    with backends.use("fused"):  # code (or the recipe key) wins over the environment
        assert path_taken(layer, monkeypatch) is Backend.FUSED
    monkeypatch.setenv(backends.ENV, "fastest")
    with pytest.raises(capslab.CapslabError, match="CAPSLAB_ROUTING_BACKEND='fastest'.*auto, fused, reference"):
        layer(torch.randn(2, 32, 8))
    with pytest.raises(capslab.CapslabError, match="routing backend 'kernel'"):
        with backends.use("kernel"):
            pass


def test_diagnostics_and_other_squashes_take_the_paths_that_compute_them(monkeypatch):
    layer = class_layer("dynamic", squash="efficient")  # a squash the kernel has not compiled in
    assert path_taken(layer, monkeypatch) is Backend.FUSED
    x = torch.randn(2, 32, 8)
    assert backends.choose(layer.routing, capslab.compute_votes(x, layer.weight, "ibjd"), True) is Backend.REFERENCE


def test_a_subclass_with_its_own_coupling_is_not_taken_for_the_compiled_one(monkeypatch):
    class Sharper(DynamicRouting):
        name = "sharper"

        def couple(self, b):
            return (2 * b).softmax(1)

    layer = class_layer("dynamic")
    layer.routing = Sharper(SPEC)
    assert backends.kernel_coupling(layer.routing) is None
    assert path_taken(layer, monkeypatch) is Backend.FUSED
    leaky = capslab.build_routing({"name": "dynamic", "leaky": True}, SPEC)
    assert backends.kernel_coupling(leaky) == "leaky_softmax"


def test_the_recipe_key_reaches_the_trainer(tmp_path, monkeypatch):
    seen = []
    choose = backends.choose
    monkeypatch.setattr(
        backends, "choose", lambda *a, **k: seen.append(backends.allowed(Backend.FUSED)) or choose(*a, **k)
    )
    r = run(
        "train",
        "recipes/quickstart.yaml",
        "train.epochs=1",
        *TINY,
        "train.routing_backend=reference",
        "--run-dir",
        tmp_path / "r",
    )
    assert r.exit_code == 0, r.output
    assert seen and not any(seen)  # every routing call ran with the fast paths switched off
    bad = run("validate", "recipes/quickstart.yaml", "train.routing_backend=fastest")
    assert bad.exit_code == 2 and "routing_backend" in bad.output


def test_the_votes_layouts_are_documented():
    for layout in VotesLayout:
        assert layout.__doc__ and layout.__doc__ != VotesLayout.__doc__, layout
    assert VotesLayout("ibjd") is VotesLayout.IBJD


def test_the_plugin_contract_is_what_the_docs_list():
    """A routing author sees ``name``, ``Params``, ``route`` (and ``couple`` for agreement routings), the
    declarations of what a routing needs, and nothing of the speed paths."""
    base = set(dir(capslab.Routing)) - set(dir(torch.nn.Module))
    assert {a for a in base if not a.startswith("_")} == {
        "name",
        "Params",
        "route",
        "iterations",
        "needs_activations",
        "needs_poses",
        "ranks_by",
        "stochastic",
        "validate_params",
    }
    agreement = set(dir(capslab.AgreementRouting)) - set(dir(capslab.Routing))
    assert {a for a in agreement if not a.startswith("_")} == {"couple", "initial_logits"}
    assert {a for a in set(dir(capslab.Squash)) - set(dir(torch.nn.Module)) if not a.startswith("_")} == {
        "name",
        "Params",
        "validate_params",
    }
