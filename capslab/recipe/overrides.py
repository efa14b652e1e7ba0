"""Command-line overrides: ``key.path=value``, the value read as YAML 1.2 (``1e-3`` is a float,
``[256, 512]`` a list, ``null`` None, ``{name: em}`` a section; ``routing=em`` replaces the section).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

OVERRIDE = "<override>"  # the "file" that override problems are reported in

KeyPath = tuple[str, ...]


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``"optimizer.lr=1e-3"`` -> (("optimizer", "lr"), 0.001); ValueError with a message if malformed."""
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise ValueError(f"{text!r}: expected key.path=value, e.g. train.epochs=2")
    try:
        value = YAML(typ="safe", pure=True).load(raw) if raw.strip() else None
    except YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{text!r}: the value is not valid YAML ({problem})") from None
    return path, value


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str], sections: Collection[str] = ()
) -> tuple[set[KeyPath], list[str]]:
    """Set each override in ``data`` (in place); returns the paths set and the problems met.

    ``sections`` are the component sections, where a name alone (``model=baseline_cnn``) stands for
    ``{name: baseline_cnn}``, so that later overrides can add its parameters.
    """
    paths: set[KeyPath] = set()
    problems: list[str] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ValueError as exc:
            problems.append(f"{OVERRIDE}: {exc}")
            continue
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                problems.append(f"{OVERRIDE}: {'.'.join(path)}: {where} is {child!r}, not a section with keys")
                break
            node = child
        else:
            if len(path) == 1 and path[0] in sections and isinstance(value, str):
                value = {"name": value}
            node[path[-1]] = value
            paths.add(path)
    return paths, problems
