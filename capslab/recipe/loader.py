"""Load and validate recipes, reporting every problem at once.

YAML 1.2 through ruamel.yaml's round-trip loader (PyYAML's YAML 1.1 reads ``1e-3`` as a string and
``off`` as False), which remembers where each key was written, so that a problem reads
``recipe.yaml:8:3: optimizer.lrr: unknown key; did you mean 'lr'?``. Then: overrides, the schema
(:class:`Recipe`), and each component section's ``Params``, looked up by name in its registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from capslab.errors import CapslabError, UnknownNameError, did_you_mean
from capslab.plugin import registry
from capslab.recipe.overrides import OVERRIDE, Problem, apply_overrides
from capslab.recipe.schema import COMPONENTS, Recipe, Section

Loc = tuple[Any, ...]


class RecipeError(CapslabError):
    """One or more problems in a recipe or its overrides; the message has one line per problem."""

    def __init__(self, problems: Sequence[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Locator:
    """Where a key path was written: ``file:line:col`` (1-based), or ``<override>``."""

    def __init__(
        self, source: str, positions: dict[Loc, tuple[int, int]] | None = None, overridden: set[Loc] | None = None
    ):
        self.source, self.positions, self.overridden = source, positions or {}, overridden or set()

    def position(self, loc: Loc) -> tuple[str, int, int]:
        """(source, line, col), 1-based; (OVERRIDE, 0, 0) for what an override set, line 0 when unknown."""
        if any(loc[:i] in self.overridden for i in range(1, len(loc) + 1)):
            return OVERRIDE, 0, 0
        if loc not in self.positions and any(o[: len(loc)] == loc for o in self.overridden):
            return OVERRIDE, 0, 0  # a section that only an override created
        if not self.positions:  # data that came from no file (a checkpoint's recipe, the command line)
            return self.source, 0, 0
        for i in range(len(loc), 0, -1):  # a missing key is reported at its closest written parent
            if loc[:i] in self.positions:
                line, col = self.positions[loc[:i]]
                return self.source, line + 1, col + 1
        return self.source, 1, 1

    def where(self, loc: Loc) -> str:
        source, line, col = self.position(loc)
        return f"{source}:{line}:{col}" if line else source

    def problem(self, loc: Loc, message: str) -> Problem:
        return Problem(*self.position(loc), ".".join(map(str, loc)), message)


def read_yaml(path: str | Path) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    """(plain Python data, {key path: (line, col)}) of a YAML file; RecipeError if unreadable."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{source}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{source}: cannot read the recipe ({exc})") from None
    try:
        node = YAML(typ="rt").load(text)
    except RecursionError:
        raise RecipeError(f"{source}: the YAML is nested too deeply to be a recipe") from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise RecipeError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except YAMLError as exc:
        raise RecipeError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}") from None
    positions: dict[Loc, tuple[int, int]] = {}
    budget = [MAX_VALUES]
    try:
        return _plain(node, (), positions, budget), positions
    except RecursionError:
        raise RecipeError(f"{source}: the YAML is nested too deeply to be a recipe") from None
    except _TooLarge:
        raise RecipeError(
            f"{source}: the YAML expands to more than {MAX_VALUES:,} values (aliases of aliases?); a recipe "
            f"holds a few hundred"
        ) from None


MAX_VALUES = 100_000  # values a recipe may expand to: a "billion laughs" alias bomb stops here, not in swap


class _TooLarge(Exception):
    pass


def _plain(node: Any, loc: Loc, positions: dict[Loc, tuple[int, int]], budget: list[int]) -> Any:
    """ruamel's commented containers and scalar subclasses -> dict / list / int / float / str. Aliases are
    expanded, at most ``budget`` values in all; keys a merge (``<<: *base``) brings in take the map's position."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge
    if isinstance(node, CommentedMap):
        own = node.lc.data or {}
        for key in node:
            where = own.get(key)
            positions[loc + (key,)] = (where[0], where[1]) if where else (node.lc.line, node.lc.col)
        return {key: _plain(value, loc + (key,), positions, budget) for key, value in node.items()}
    if isinstance(node, CommentedSeq):
        for i in range(len(node)):
            positions[loc + (i,)] = node.lc.item(i)
        return [_plain(value, loc + (i,), positions, budget) for i, value in enumerate(node)]
    for kind in (bool, int, float, str):  # bool first: it is an int
        if isinstance(node, kind):
            return kind(node)
    return node


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; RecipeError lists every problem."""
    data, positions = read_yaml(path)
    return parse_recipe(data, str(path), overrides, positions)


def parse_recipe(
    data: Any,
    source: str = "<recipe>",
    overrides: Iterable[str] = (),
    positions: dict[Loc, tuple[int, int]] | None = None,
) -> Recipe:
    """Validate recipe data (a dict, e.g. from YAML or a checkpoint); component params are resolved
    through their plugins, so the returned recipe holds every parameter with its default filled in."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}:1:1: a recipe is a mapping of sections (seed, data, model, ...), not {type(data).__name__}"
        )
    data = {k: ({"name": v} if k in COMPONENTS and isinstance(v, str) else v) for k, v in data.items()}
    overridden, problems = apply_overrides(data, overrides, COMPONENTS)
    at = Locator(source, positions, overridden)
    recipe = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems += [_problem(err, Recipe, at) for err in exc.errors()]
    resolved: dict[str, dict[str, Any]] = {}
    for key, kind in COMPONENTS.items():
        section = data.get(key, Recipe.model_fields[key].default)
        problems += _resolve(key, kind, section, at, resolved)
    problems += _check_compatible(resolved, at)
    for key, kind in LISTS.items():
        sections = data.get(key) or []
        for i, section in enumerate(sections if isinstance(sections, list) else []):
            problems += _resolve(f"{key}.{i}", kind, section, at, resolved)
    if problems or recipe is None:
        raise RecipeError(sorted(problems, key=_file_order))
    update: dict[str, Any] = {k: Section.model_validate(v) for k, v in resolved.items() if k in COMPONENTS}
    for key in LISTS:
        update[key] = [Section.model_validate(resolved[f"{key}.{i}"]) for i in range(len(getattr(recipe, key)))]
    return recipe.model_copy(update=update)


LISTS = {"test_also": "dataset", "loggers": "logger"}  # recipe keys holding lists of component sections


def _resolve(key: str, kind: str, raw: Any, at: Locator, resolved: dict[str, dict[str, Any]]) -> list[Problem]:
    """Look the section's name up in its registry and validate its params with the plugin's Params."""
    try:
        section = raw if isinstance(raw, Section) else Section.model_validate(raw)
    except ValidationError:
        return []  # the schema pass already reported it
    try:
        cls = registry(kind).get(section.name)
    except UnknownNameError as exc:
        return [at.problem((key, "name"), str(exc))]
    try:
        params = cls.Params.model_validate(section.params)
    except ValidationError as exc:
        return [_problem(err, cls.Params, at, prefix=(key,), extra_keys=["name"]) for err in exc.errors()]
    resolved[key] = {"name": section.name, **params.model_dump(mode="json", by_alias=True)}
    return []


def _check_compatible(resolved: dict[str, dict[str, Any]], at: Locator) -> list[Problem]:
    """A loss for capsule lengths on a model that outputs logits trains without error, and badly."""
    if "model" not in resolved or "loss" not in resolved:
        return []
    model, loss = registry("model").get(resolved["model"]["name"]), registry("loss").get(resolved["loss"]["name"])
    if getattr(loss, "expects", "probability") == "probability" and getattr(model, "scores", "") == "logits":
        return [
            at.problem(
                ("loss", "name"),
                f"loss {loss.name!r} expects scores in [0, 1] but model "
                f"{model.name!r} outputs logits; use loss: cross_entropy",
            )
        ]
    return []


def _problem(
    err: Mapping[str, Any], cls: type[BaseModel], at: Locator, prefix: Loc = (), extra_keys: Sequence[str] = ()
) -> Problem:
    """One pydantic error -> one ``where: key.path: message`` line."""
    loc = prefix + tuple(err["loc"])
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        msg = "unknown key" + did_you_mean(str(loc[-1]), [*_keys(cls, tuple(err["loc"][:-1])), *extra_keys])
    elif kind == "missing":
        msg = "missing required key"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"expected a mapping of keys (got {_short(value)})"
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        msg = f"{err['msg']} (got {_short(value)}){did_you_mean(str(value), choices)}"
    else:
        msg = f"{err['msg'].removeprefix('Value error, ')} (got {_short(value)})"
    return at.problem(loc, msg)


def _file_order(problem: str) -> tuple[int, int, int]:
    """Problems in the file by line and column, then the overrides in the order given (a stable sort)."""
    if isinstance(problem, Problem) and problem.source != OVERRIDE and problem.line:
        return (0, problem.line, problem.col)
    return (1, 0, 0)


def _keys(cls: type[BaseModel], loc: Loc) -> list[str]:
    """The keys a (possibly nested) pydantic model accepts at ``loc``, for did-you-mean."""
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return [f.alias or name for name, f in cls.model_fields.items()]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dump_recipe(recipe: Recipe, dest: str | Path | IO[str], header: str = "") -> None:
    """Write the resolved recipe (every default filled in) as YAML to a path or an open text stream."""
    if not isinstance(dest, (str, Path)):
        _dump(recipe, dest, header)
        return
    with open(dest, "w", encoding="utf-8") as f:
        _dump(recipe, f, header)


def _dump(recipe: Recipe, f: IO[str], header: str) -> None:
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    f.write("".join(f"# {line}\n" for line in header.splitlines()))
    yaml.dump(recipe.to_dict(), f)
