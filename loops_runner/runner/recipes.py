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

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from loops_runner.runner.config import ConfigError


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


def _load_file_module(path: Path, field: str) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"{field}: file {str(path)!r} does not exist")
    name = f"loops_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{field}: cannot import file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_module(name: str, target: str, field: str) -> ModuleType:
    # The user's working directory holds their recipes: make it importable the
    # way `python -m` would, also when launched through a console script.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise ConfigError(f"{field} {target!r}: cannot import module {name!r} "
                          f"({error}); is its folder on PYTHONPATH or the working directory?"
                          ) from None


def load_callable(target: str, field: str,
                  default_name: str) -> tuple[ModuleType, Callable[..., Any]]:
    """Resolve a user's ``module.function``, ``module:function`` or ``path.py[:function]``.

    Modules are found from the working directory, like recipes; errors name ``field``.
    """
    if not target:
        raise ConfigError(f"{field} is empty; it names a function")
    if ":" in target:
        module_part, function_name = target.rsplit(":", 1)
    elif target.endswith(".py"):
        module_part, function_name = target, default_name
    else:
        module_part, _, function_name = target.rpartition(".")
    if module_part.endswith(".py") or "/" in module_part:
        module = _load_file_module(Path(module_part).expanduser().resolve(), field)
    else:
        module = _import_module(module_part, target, field)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"{field} {target!r}: {module.__name__} has no callable "
                          f"{function_name!r}")
    return module, function


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
