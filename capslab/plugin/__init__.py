"""Plugin machinery: hookspecs, the loader and the registries. Plugins import only ``impl``."""

from capslab.plugin.manager import Plugins, get_plugins, registry, reset_plugins
from capslab.plugin.registry import Entry, Registry
from capslab.plugin.spec import impl

__all__ = ["Entry", "Plugins", "Registry", "get_plugins", "impl", "registry", "reset_plugins"]
