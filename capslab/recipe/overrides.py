"""Command-line overrides: ``key.path=value``, the value read as YAML 1.2 (``1e-3`` is a float,
``[256, 512]`` a list, ``null`` None, ``{name: em}`` a section; ``routing=em`` replaces the section).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

OVERRIDE = "<override>"  # the "file" that override problems are reported in


class Problem(str):
    """One recipe problem: printed as ``where: key.path: message``, and kept structured until then — the
    file (``source``; OVERRIDE for a command-line override), ``line`` and ``col`` (1-based, 0 when unknown),
    the dotted ``key`` and the ``message`` — so problems sort by position and can be re-placed (a comparison
    file puts a variant's problem at that variant's line) without parsing the text back."""

    source: str
    line: int
    col: int
    key: str
    message: str

    def __new__(cls, source: str, line: int, col: int, key: str, message: str) -> Problem:
        where = f"{source}:{line}:{col}" if line else source
        self = super().__new__(cls, f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.source, self.line, self.col, self.key, self.message = source, line, col, key, message
        return self

    def moved(self, source: str, line: int, col: int) -> Problem:
        return Problem(source, line, col, self.key, self.message)


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
) -> tuple[set[KeyPath], list[Problem]]:
    """Set each override in ``data`` (in place); returns the paths set and the problems met.

    ``sections`` are the component sections, where a name alone (``model=baseline_cnn``) stands for
    ``{name: baseline_cnn}``, so that later overrides can add its parameters.
    """
    paths: set[KeyPath] = set()
    problems: list[Problem] = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ValueError as exc:
            problems.append(Problem(OVERRIDE, 0, 0, "", str(exc)))
            continue
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                problems.append(
                    Problem(OVERRIDE, 0, 0, ".".join(path), f"{where} is {child!r}, not a section with keys")
                )
                break
            node = child
        else:
            if len(path) == 1 and path[0] in sections and isinstance(value, str):
                value = {"name": value}
            node[path[-1]] = value
            paths.add(path)
    return paths, problems
