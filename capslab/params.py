"""Base class of every component's parameters: a pydantic model that rejects unknown keys."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(ge=1)]  # a layer width, kernel size, stride: ``list[PositiveInt]`` for lists


class Params(BaseModel):
    """Parameters of a plugin component; recipes fill them, unknown keys are errors."""

    # NaN and infinity are never meaningful settings (an lr of .inf validated and trained to NaN)
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


_Params = Params  # the base class, under a name the attribute below does not shadow


class Component:
    """Mixin for everything a registry holds: a registry ``name`` and a ``Params`` model."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[_Params]] = _Params

    @classmethod
    def validate_params(cls, params: dict[str, Any] | None = None) -> _Params:
        return cls.Params.model_validate(params or {})


def with_preset(data: Any, presets: dict[str, dict[str, Any]], key: str = "preset") -> Any:
    """For a ``mode="before"`` validator: the named preset's values under the keys the data leaves unset.

    ``{"preset": "official", "iterations": 2}`` -> the official values, with ``iterations`` 2 as given.
    """
    if isinstance(data, dict) and data.get(key) in presets:
        return {**presets[data[key]], **data}
    return data
