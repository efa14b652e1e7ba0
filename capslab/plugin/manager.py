"""Loads plugins from the ``capslab`` entry-point group and fills the registries."""

from __future__ import annotations

import importlib.metadata as md
import os
from functools import lru_cache
from typing import Any

import pluggy

from capslab.errors import PluginError
from capslab.plugin import spec
from capslab.plugin.registry import Entry, Registry

DISABLE_ENV = "CAPSLAB_DISABLE_PLUGINS"


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


class Plugins:
    """All loaded plugins and the registries they filled."""

    def __init__(
        self,
        entry_points: list[md.EntryPoint] | None = None,
        blocked: set[str] | None = None,
        modules: dict[str, Any] | None = None,
    ):
        """Load ``entry_points`` (default: the installed ``capslab`` group) plus already-imported
        ``modules`` (name -> module; tests and notebooks use these), minus the ``blocked`` names."""
        self.pm = pluggy.PluginManager(spec.PROJECT)
        self.pm.add_hookspecs(spec)
        self.registries = {kind: Registry(kind) for kind in spec.KINDS.values()}
        self.dists: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)
        self.blocked = blocked_names() if blocked is None else blocked
        if entry_points is None:
            entry_points = list(md.entry_points(group=spec.PROJECT))
        for ep in entry_points:
            self._load(ep)
        for name, module in (modules or {}).items():
            self._register(module, name, "__main__", "")
        self._check_hooks()
        self._collect()

    def _register(self, module: Any, name: str, dist: str, version: str) -> None:
        if name in self.blocked:
            self.pm.set_blocked(name)
            return
        self.pm.register(module, name=name)
        self.dists[name] = (dist, version)

    def _load(self, ep: md.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in self.blocked:
            self.pm.set_blocked(ep.name)
            return
        try:
            module = ep.load()
        except Exception as exc:  # any import failure is the plugin's, reported by its name
            raise PluginError(
                f"plugin {ep.name!r} ({dist} {version}, {ep.value}) failed to import: "
                f"{type(exc).__name__}: {exc}; fix or uninstall it, or set {DISABLE_ENV}={ep.name}"
            ) from exc
        self._register(module, ep.name, dist, version)

    def _check_hooks(self) -> None:
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) if exc.plugin is not None else "?"
            raise PluginError(
                f"plugin {name!r} implements a hook capslab does not know ({exc}); "
                f"known hooks: {', '.join(spec.KINDS)}"
            ) from exc

    def _collect(self) -> None:
        for hook_name, kind in spec.KINDS.items():
            registry = self.registries[kind]
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                dist, version = self.dists.get(impl.plugin_name, ("?", "?"))

                def register(obj: Any, name: str | None = None, *, _p=impl.plugin_name, _d=dist, _v=version) -> None:
                    comp_name = name or getattr(obj, "name", None)
                    if not comp_name:
                        raise PluginError(f"plugin {_p!r} registered a {kind} without a name: {obj!r}")
                    registry.add(Entry(kind, comp_name, obj, _p, _d, _v))

                impl.function(register=register)

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]


@lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugin set, loaded on first use."""
    return Plugins()


def reset_plugins() -> None:
    """Forget the loaded plugins (the next lookup reloads; tests use this after changing the env)."""
    get_plugins.cache_clear()


def registry(kind: str) -> Registry:
    """The registry of one kind: 'routing', 'squash', 'loss', 'dataset' or 'model'."""
    plugins = get_plugins()
    if kind not in plugins.registries:
        from capslab.errors import UnknownNameError

        raise UnknownNameError("component kind", kind, plugins.registries)
    return plugins.registries[kind]
