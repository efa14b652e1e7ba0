"""Name -> component lookups, one registry per kind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from capslab.errors import PluginError, UnknownNameError


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any
    plugin: str  # entry-point name (what CAPSLAB_DISABLE_PLUGINS takes)
    dist: str  # distribution that ships the plugin
    version: str

    @property
    def builtin(self) -> bool:
        return self.dist == "capslab"


class Registry:
    """The components of one kind, by name."""

    def __init__(self, kind: str, failed: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.failed = failed if failed is not None else {}  # plugins left out (name -> reason), for lookups

    def check_new(self, entry: Entry) -> None:
        """PluginError when ``entry``'s name is taken by another plugin."""
        old = self._entries.get(entry.name)
        if old is not None:
            raise PluginError(
                f"{self.kind} {entry.name!r} is registered twice: by plugin {old.plugin!r} "
                f"({old.dist} {old.version}) and by plugin {entry.plugin!r} ({entry.dist} {entry.version}); "
                f"uninstall one or block it with CAPSLAB_DISABLE_PLUGINS={entry.plugin}"
            )

    def add(self, entry: Entry) -> None:
        self.check_new(entry)
        self._entries[entry.name] = entry

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self._entries, self.failed) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
