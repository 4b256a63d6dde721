"""Finding a recipe: ``+recipe=<name>`` YAML files and their ``_target_`` entry points.

A recipe is a plain module with ``run(ctx, cfg) -> dict`` (final metrics). It
may define a pydantic ``Config`` (its section schema, validated before anything
starts), ``prepare_data(cfg, seed)`` (reads and checks its data before anything
is provisioned; the result reaches ``run`` as ``ctx.data``) and
``plan(cfg, tokenizer) -> dict`` (what ``dry_run=true`` prints).
``_target_`` is a dotted path (``loops_runner.recipes.sft.run``, ``my_pkg.recipe.run``), a
``module:function`` pair, or a file path (``path/to/recipe.py:run``).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from types import ModuleType
from typing import Any

from loops_runner.errors import ConfigError
from loops_runner.plugins import load_callable


@dataclass(frozen=True)
class Recipe:
    target: str
    module: ModuleType
    run: Callable[..., dict[str, Any]]

    @property
    def config_schema(self) -> Any | None:
        return getattr(self.module, "Config", None)

    @property
    def prepare_data(self) -> Callable[..., Any] | None:
        return getattr(self.module, "prepare_data", None)

    @property
    def plan(self) -> Callable[..., dict[str, Any]] | None:
        return getattr(self.module, "plan", None)


_OLD_BUILTIN_PREFIX = "recipes."


def builtin_recipe_names() -> list[str]:
    folder = resources.files("loops_runner.conf") / "recipe"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(target: str) -> Recipe:
    """Resolve ``_target_`` to the recipe module and its ``run`` function."""
    if not target:
        raise ConfigError("recipe._target_ is empty; it names the recipe's run function")
    try:
        module, function = load_callable(target, "recipe._target_", "run")
    except ConfigError:
        # The built-in recipes were a top-level ``recipes`` package before they
        # moved into this one; a user's config naming them the old way still runs.
        moved = f"{__package__.rpartition('.')[0]}.{target}"
        if not target.startswith(_OLD_BUILTIN_PREFIX) or importlib.util.find_spec(
                "recipes") is not None:
            raise
        warnings.warn(f"recipe._target_ {target!r}: the built-in recipes are "
                      f"loops_runner.recipes now; write {moved!r}", FutureWarning,
                      stacklevel=2)
        module, function = load_callable(moved, "recipe._target_", "run")
    return Recipe(target, module, function)
