"""The plugin system: entry points, registries, errors, blocking, a real third-party package."""

import importlib.metadata as md
import os
import pkgutil
import subprocess
import sys
import types

import pytest
from helpers import ROOT, install_package, run_python

import capslab
import capslab_plugins
from capslab.errors import PluginWarning, UnknownNameError
from capslab.plugin import Plugins, registry


def _module(name, **hooks):
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, capslab.hookimpl(fn))
    return mod


def test_every_builtin_plugin_module_is_declared_as_an_entry_point():
    declared = {ep.value for ep in md.entry_points(group="capslab") if ep.dist and ep.dist.name == "capslab"}
    found = {m.name for m in pkgutil.walk_packages(capslab_plugins.__path__, "capslab_plugins.") if not m.ispkg}
    assert found == declared, f"undeclared: {found - declared}; declared but missing: {declared - found}"


def test_builtins_register_through_the_capslab_entry_point_group():
    entry = registry("routing").entry("dynamic")
    assert entry.plugin == "routing.dynamic" and entry.dist == "capslab" and entry.builtin
    for kind, name in [
        ("squash", "sabour"),
        ("squash", "efficient"),
        ("loss", "margin"),
        ("loss", "spread"),
        ("loss", "cross_entropy"),
        ("model", "capsnet"),
        ("model", "baseline_cnn"),
    ]:
        assert name in registry(kind).names(), (kind, name)


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UnknownNameError) as err:
        registry("routing").get("dynamc")
    msg = str(err.value)
    assert "did you mean 'dynamic'?" in msg and "known:" in msg and "dynamic" in msg.split("known:")[1]


def left_out(match: str, **modules) -> Plugins:
    """Load ``modules`` as plugins, expecting one warning that matches; the plugins still load."""
    with pytest.warns(PluginWarning, match=match) as caught:
        plugins = Plugins(entry_points=[], modules={"good": _module("g", register_losses=good_loss), **modules})
    assert len([w for w in caught if issubclass(w.category, PluginWarning)]) == 1, [str(w.message) for w in caught]
    assert "fine" in plugins.registry("loss"), "a healthy plugin beside a broken one must still load"
    return plugins


def good_loss(register):
    register(capslab.registry("loss").get("margin"), name="fine")


def test_duplicate_names_leave_the_second_plugin_out_naming_both():
    def reg(register):
        register(capslab.registry("squash").get("sabour"), name="twin")

    def also(register):
        register(capslab.registry("loss").get("margin"), name="extra")

    plugins = left_out(
        r"'twin' is registered twice: by plugin 'first'.*plugin 'second'",
        first=_module("a", register_squashes=reg),
        second=_module("b", register_squashes=reg, register_losses=also),
    )
    assert plugins.registry("squash").entry("twin").plugin == "first"
    assert "extra" not in plugins.registry("loss")  # all or nothing: the clashing plugin's other components too
    assert set(plugins.failed) == {"second"}


def test_plugin_that_fails_to_import_is_left_out_by_name():
    ep = md.EntryPoint("broken", "capslab_no_such_module_xyz", "capslab")
    with pytest.warns(PluginWarning, match=r"plugin 'broken' .*failed to import.*CAPSLAB_DISABLE_PLUGINS=broken"):
        plugins = Plugins(entry_points=[ep], modules={"good": _module("g", register_losses=good_loss)})
    assert "No module named" in plugins.failed["broken"] and "fine" in plugins.registry("loss")
    with pytest.raises(UnknownNameError, match="left out as broken: plugin 'broken'"):
        plugins.registry("routing").get("from_broken")


def test_misspelt_hook_leaves_the_plugin_out_with_a_suggestion():
    plugins = left_out(
        r"plugin 'typo'.*'register_routing'.*did you mean 'register_routings'",
        typo=_module("t", register_routing=lambda register: None, register_losses=good_loss),
    )
    assert "typo" in plugins.failed


def test_a_hook_that_raises_leaves_the_plugin_out_by_name():
    def bad(register):
        register(capslab.registry("squash").get("sabour"), name="half")
        raise RuntimeError("boom")

    plugins = left_out(
        r"plugin 'raiser' is disabled: its register_squashes raised RuntimeError: boom",
        raiser=_module("r", register_squashes=bad),
    )
    assert "half" not in plugins.registry("squash")  # what it registered before raising is dropped


def test_a_plugin_that_registers_nothing_is_named():
    unmarked = types.ModuleType("u")
    unmarked.register_routings = lambda register: None  # forgot @capslab.hookimpl
    left_out(
        r"plugin 'forgot' registered no component: its register_routings is not marked @capslab.hookimpl",
        forgot=unmarked,
    )


def test_component_without_name_leaves_the_plugin_out():
    left_out("without a name", anon=_module("n", register_losses=lambda register: register(object())))


def test_a_broken_plugin_warns_once_and_every_command_still_works(tmp_path):
    """A real installed distribution with a misspelt hook: `capslab plugins` lists it as failed, `validate`
    works, and each prints the warning as one line."""
    (tmp_path / "typo_plugin.py").write_text(
        "import capslab\n\n@capslab.hookimpl\ndef register_routing(register):\n    pass\n"
    )
    info = tmp_path / "typo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: typo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[capslab]\ntypo = typo_plugin\n")
    cli = "import sys; from capslab.cli.main import main; main(sys.argv[1:])"
    for args in (["plugins"], ["validate", str(ROOT / "recipes" / "quickstart.yaml")]):
        res = subprocess.run(
            [sys.executable, "-c", cli, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"},
        )
        assert res.returncode == 0, res.stderr
        lines = [line for line in res.stderr.splitlines() if "typo" in line]
        assert len(lines) == 1 and lines[0].startswith("warning: plugin 'typo' (typo-plugin 0.1) is disabled"), (
            res.stderr
        )
        assert "did you mean 'register_routings'" in lines[0] and "Traceback" not in res.stderr
    listing = subprocess.run(
        [sys.executable, "-c", cli, "plugins"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"},
    )
    assert "dynamic" in listing.stdout and "left out: typo (typo-plugin 0.1): it implements" in listing.stdout


def test_disable_env_blocks_named_plugins(monkeypatch):
    monkeypatch.setenv("CAPSLAB_DISABLE_PLUGINS", "routing.dynamic, squash.efficient")
    plugins = Plugins()
    assert "dynamic" not in plugins.registry("routing") and "efficient" not in plugins.registry("squash")
    assert "sabour" in plugins.registry("squash")


def test_third_party_package_registers_and_is_usable_end_to_end(tmp_path):
    install_package(ROOT / "tests" / "thirdparty_plugin", tmp_path)
    code = """
import torch, capslab
from capslab.testing import run_all
e = capslab.registry("routing").entry("toy_attention")
print(e.plugin, e.dist, e.version, e.builtin)
run_all(kinds=("routing",), names=["toy_attention"])
model = capslab.build_model({"name": "capsnet", "conv_channels": 16, "primary_types": 4},
                            capslab.DataInfo(1, 28, 28, 10), routing={"name": "toy_attention", "temperature": 2.0})
out = model(torch.rand(2, 1, 28, 28), torch.tensor([1, 2]))
(out.scores.sum() + out.reconstruction.sum()).backward()
print("ok", tuple(out.scores.shape))
"""
    res = run_python(code, extra_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "toy capslab-toy-routing 0.3.0 False" in res.stdout and "ok (2, 10)" in res.stdout
    blocked = run_python(code, extra_path=tmp_path, env={"CAPSLAB_DISABLE_PLUGINS": "toy"})
    assert blocked.returncode != 0 and "unknown routing 'toy_attention'" in blocked.stderr
