"""``capslab plugins``: every registered component, by kind, with the plugin and version it came from."""

from __future__ import annotations

import typer
from rich.table import Table

from capslab.cli.common import out, user_errors
from capslab.plugin import get_plugins
from capslab.plugin.manager import DISABLE_ENV, blocked_names
from capslab.plugin.spec import KINDS


@user_errors
def plugins() -> None:
    """List the routings, squashes, losses, datasets and models that installed plugins register."""
    table = Table(title="capslab plugins")
    for column in ("kind", "name", "plugin", "version"):
        table.add_column(column, overflow="fold")  # wrap on narrow terminals, never cut a value
    loaded = get_plugins()
    for kind in KINDS.values():
        for e in loaded.registry(kind):
            table.add_row(kind, e.name, e.plugin, e.version if e.builtin else f"{e.version} ({e.dist})")
    out.print(table)
    for name, reason in sorted(loaded.failed.items()):
        dist, version = loaded.dists.get(name, ("?", "?"))
        out.print(f"left out: {name} ({dist} {version}): {reason}")
    blocked = sorted(blocked_names())
    if blocked:
        out.print(f"blocked by {DISABLE_ENV}: {', '.join(blocked)}")


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
