"""Every hook a capslab plugin can implement.

Each hook is handed a ``register`` callable and calls it once per component class, in the style of
simonw/llm: ``register(MyRouting)`` (the name is the class's ``name``) or ``register(obj, name="x")``.
Plugins never touch global state; the recipe decides what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "capslab"
_spec = pluggy.HookspecMarker(PROJECT)
impl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., Any]


@_spec
def register_routings(register: Register) -> None:
    """Register :class:`capslab.Routing` subclasses."""


@_spec
def register_squashes(register: Register) -> None:
    """Register :class:`capslab.Squash` subclasses."""


@_spec
def register_losses(register: Register) -> None:
    """Register :class:`capslab.Loss` subclasses."""


@_spec
def register_datasets(register: Register) -> None:
    """Register :class:`capslab.Dataset` subclasses."""


@_spec
def register_models(register: Register) -> None:
    """Register :class:`capslab.Model` subclasses."""


@_spec
def register_loggers(register: Register) -> None:
    """Register :class:`capslab.Logger` subclasses."""


# hook name -> registry kind (singular, as recipes and `capslab plugins` say it)
KINDS = {
    "register_routings": "routing",
    "register_squashes": "squash",
    "register_losses": "loss",
    "register_datasets": "dataset",
    "register_models": "model",
    "register_loggers": "logger",
}
