"""The plugin system: entry points, registries, errors, blocking, a real third-party package."""

import importlib.metadata as md
import pkgutil
import types

import pytest
from helpers import ROOT, install_package, run_python

import capslab
import capslab_plugins
from capslab.errors import PluginError, UnknownNameError
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
    for kind, name in [("squash", "sabour"), ("squash", "efficient"), ("loss", "margin"), ("loss", "spread"),
                       ("loss", "cross_entropy"), ("model", "capsnet"), ("model", "baseline_cnn")]:
        assert name in registry(kind).names(), (kind, name)


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UnknownNameError) as err:
        registry("routing").get("dynamc")
    msg = str(err.value)
    assert "did you mean 'dynamic'?" in msg and "known:" in msg and "dynamic" in msg.split("known:")[1]


def test_duplicate_names_are_an_error_naming_both_plugins():
    def reg(register):
        register(capslab.registry("squash").get("sabour"), name="twin")

    with pytest.raises(PluginError, match=r"'twin' is registered twice: by plugin 'first'.*plugin 'second'"):
        Plugins(entry_points=[], modules={"first": _module("a", register_squashes=reg),
                                          "second": _module("b", register_squashes=reg)})


def test_plugin_that_fails_to_import_is_reported_by_name():
    ep = md.EntryPoint("broken", "capslab_no_such_module_xyz", "capslab")
    with pytest.raises(PluginError, match=r"plugin 'broken' .*failed to import.*CAPSLAB_DISABLE_PLUGINS=broken"):
        Plugins(entry_points=[ep])


def test_misspelt_hook_is_reported_by_name():
    with pytest.raises(PluginError, match=r"plugin 'typo'.*register_routng"):
        Plugins(entry_points=[], modules={"typo": _module("t", register_routng=lambda register: None)})


def test_disable_env_blocks_named_plugins(monkeypatch):
    monkeypatch.setenv("CAPSLAB_DISABLE_PLUGINS", "routing.dynamic, squash.efficient")
    plugins = Plugins()
    assert "dynamic" not in plugins.registry("routing") and "efficient" not in plugins.registry("squash")
    assert "sabour" in plugins.registry("squash")


def test_component_without_name_is_an_error():
    with pytest.raises(PluginError, match="without a name"):
        Plugins(entry_points=[], modules={"anon": _module("n", register_losses=lambda register: register(object()))})


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
