"""Recipes: YAML experiments validated by a schema and by each named plugin's Params."""

from capslab.recipe.embedded import DEFAULT, embedded_recipes, find_recipe, recipes_dir
from capslab.recipe.loader import RecipeError, dump_recipe, load_recipe, parse_recipe, read_yaml
from capslab.recipe.overrides import apply_overrides, parse_override
from capslab.recipe.schema import (
    COMPONENTS,
    CheckpointConfig,
    OptimizerConfig,
    Recipe,
    SchedulerConfig,
    Section,
    TrainConfig,
)

__all__ = [
    "COMPONENTS",
    "DEFAULT",
    "CheckpointConfig",
    "OptimizerConfig",
    "Recipe",
    "RecipeError",
    "SchedulerConfig",
    "Section",
    "TrainConfig",
    "apply_overrides",
    "dump_recipe",
    "embedded_recipes",
    "find_recipe",
    "load_recipe",
    "parse_override",
    "parse_recipe",
    "read_yaml",
    "recipes_dir",
]
