"""Loads plugins from the ``capslab`` entry-point group and fills the registries."""

from __future__ import annotations

import importlib.metadata as md
import os
import warnings
from functools import lru_cache
from typing import Any

import pluggy

from capslab.errors import PluginError, PluginWarning, did_you_mean
from capslab.plugin import spec
from capslab.plugin.registry import Entry, Registry

DISABLE_ENV = "CAPSLAB_DISABLE_PLUGINS"


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


class Plugins:
    """All loaded plugins and the registries they filled.

    A broken plugin (it fails to import, implements a misspelt hook, raises in a hook, registers a nameless
    component or a name another plugin has) is left out whole: it is named once in a :class:`PluginWarning`
    and in ``failed`` (plugin -> reason, what ``capslab plugins`` lists), and everything else works. A plugin
    that registers nothing gets a warning too (usually a ``register_*`` function without ``@capslab.hookimpl``).
    """

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
        self.failed: dict[str, str] = {}  # plugin name -> why it was left out
        self.registries = {kind: Registry(kind, self.failed) for kind in spec.KINDS.values()}
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

    def _label(self, name: str) -> str:
        dist, version = self.dists.get(name, ("?", "?"))
        return f"plugin {name!r} ({dist} {version})" if dist != "__main__" else f"plugin {name!r}"

    def _fail(self, name: str, reason: str) -> None:
        """Leave plugin ``name`` out, and say so once."""
        self.failed[name] = reason
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        warnings.warn(
            f"{self._label(name)} is disabled: {reason}; fix or uninstall it, or set "
            f"{DISABLE_ENV}={name} to silence this",
            PluginWarning,
            stacklevel=4,
        )

    def _register(self, module: Any, name: str, dist: str, version: str) -> None:
        if name in self.blocked:
            self.pm.set_blocked(name)
            return
        self.dists[name] = (dist, version)
        self.pm.register(module, name=name)

    def _load(self, ep: md.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in self.blocked:
            self.pm.set_blocked(ep.name)
            return
        try:
            module = ep.load()
        except Exception as exc:  # any import failure is the plugin's, reported by its name
            self.dists[ep.name] = (dist, version)
            self._fail(ep.name, f"{ep.value} failed to import: {type(exc).__name__}: {exc}")
            return
        self._register(module, ep.name, dist, version)

    def _check_hooks(self) -> None:
        """A plugin marking a function capslab has no hook for (a typo) is left out, with a suggestion."""
        for name, plugin in list(self.pm.list_name_plugin()):
            if plugin is None:  # blocked
                continue
            marked = [attr for attr in dir(plugin) if self.pm.parse_hookimpl_opts(plugin, attr) is not None]
            unknown = [attr for attr in marked if attr not in spec.KINDS]
            if unknown:
                hints = "".join(did_you_mean(attr, spec.KINDS) for attr in unknown)
                self._fail(
                    name,
                    f"it implements {', '.join(map(repr, unknown))}, which is no capslab hook"
                    f"{hints or ''}; known hooks: {', '.join(spec.KINDS)}",
                )
        self.pm.check_pending()  # nothing unknown is left registered

    def _collect(self) -> None:
        """Each plugin's components, all or nothing: a hook that raises or a clash leaves the plugin out."""
        for name, plugin in list(self.pm.list_name_plugin()):
            if plugin is None:  # blocked
                continue
            try:
                entries = self._components(name, plugin)
            except PluginError as exc:
                self._fail(name, str(exc))
                continue
            for entry in entries:
                self.registries[entry.kind].add(entry)
            if not entries:
                self._warn_empty(name, plugin)

    def _components(self, plugin_name: str, plugin: Any) -> list[Entry]:
        """What the plugin's hooks register; PluginError if a hook raises, or a name is missing or taken."""
        entries: list[Entry] = []
        dist, version = self.dists.get(plugin_name, ("?", "?"))
        for hook_name, kind in spec.KINDS.items():
            if not hasattr(plugin, hook_name) or self.pm.parse_hookimpl_opts(plugin, hook_name) is None:
                continue

            def register(obj: Any, name: str | None = None, *, _kind: str = kind) -> None:
                comp_name = name or getattr(obj, "name", None)
                if not comp_name:
                    raise PluginError(f"it registered a {_kind} without a name: {obj!r}")
                entries.append(Entry(_kind, comp_name, obj, plugin_name, dist, version))

            try:
                getattr(plugin, hook_name)(register=register)
            except PluginError:
                raise
            except Exception as exc:  # the plugin's own bug, reported by its name
                raise PluginError(f"its {hook_name} raised {type(exc).__name__}: {exc}") from exc
        seen: set[tuple[str, str]] = set()
        for entry in entries:
            self.registries[entry.kind].check_new(entry)
            if (entry.kind, entry.name) in seen:
                raise PluginError(f"it registers {entry.kind} {entry.name!r} twice")
            seen.add((entry.kind, entry.name))
        return entries

    def _warn_empty(self, name: str, plugin: Any) -> None:
        unmarked = [attr for attr in spec.KINDS if callable(getattr(plugin, attr, None))]
        why = (
            f"its {', '.join(unmarked)} {'is' if len(unmarked) == 1 else 'are'} not marked @capslab.hookimpl"
            if unmarked
            else f"it implements none of the hooks {', '.join(spec.KINDS)}"
        )
        warnings.warn(f"{self._label(name)} registered no component: {why}", PluginWarning, stacklevel=4)

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
