"""Build components from recipe sections: ``{"name": <registry name>, **params}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capslab.data.base import DataInfo, Dataset
from capslab.losses.base import Loss
from capslab.models.base import BuildContext, Model
from capslab.plugin import registry
from capslab.routing.base import Routing, RoutingSpec
from capslab.squash import Squash


def split_section(section: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
    """``{"name": "dynamic", "iterations": 3}`` or ``"dynamic"`` -> ("dynamic", {"iterations": 3})."""
    if isinstance(section, str):
        return section, {}
    params = dict(section)
    return params.pop("name"), params


def build(kind: str, section: Mapping[str, Any] | str, *args: Any, **context: Any) -> Any:
    name, params = split_section(section)
    return registry(kind).get(name)(*args, **context, **params)


def build_squash(section: Mapping[str, Any] | str = "sabour") -> Squash:
    return build("squash", section)


def build_loss(section: Mapping[str, Any] | str = "margin") -> Loss:
    return build("loss", section)


def build_dataset(section: Mapping[str, Any] | str) -> Dataset:
    return build("dataset", section)


def build_routing(section: Mapping[str, Any] | str, spec: RoutingSpec, squash: Squash | None = None) -> Routing:
    return build("routing", section, spec, squash=squash)


def build_model(
    section: Mapping[str, Any] | str,
    info: DataInfo,
    routing: Mapping[str, Any] | str = "dynamic",
    squash: Mapping[str, Any] | str = "sabour",
) -> Model:
    squash_module = build_squash(squash)
    model_name = split_section(section)[0]

    def make_routing(spec: RoutingSpec) -> Routing:
        r = build_routing(routing, spec, squash_module)
        r._caller = model_name  # type: ignore[assignment]  # named by capslab.routing.base.MissingRoutingInput
        return r

    return build("model", section, BuildContext(info, make_routing, squash_module))
