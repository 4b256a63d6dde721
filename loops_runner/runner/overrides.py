"""Command-line overrides as a user means them: free-form mappings open, typos explained.

Two things around Hydra's own override step (one Hydra internal, pinned to
hydra-core 1.3; if it ever moves, the wrap is skipped and Hydra's behaviour stays):

* A config field that is a mapping of the user's own keys (``recipe.dataset.columns``,
  ``recipe.env_args``, ...) takes new keys without ``+``:
  ``recipe.dataset.columns='{question: prompt}'`` and
  ``recipe.dataset.columns.question=prompt`` both work. Which fields those are comes
  from the pydantic schemas (the runner's and the chosen recipe's ``Config``), so a
  section with fixed keys still refuses a typo.
* Hydra refuses ``recipe.learnin_rate=1`` with "Key 'learnin_rate' is not in
  struct". We add the nearest existing key and the keys allowed there.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel


def _suggestion(cfg: DictConfig, key: str) -> str:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        return ""
    allowed = [str(k) for k in parent]
    close = difflib.get_close_matches(leaf, allowed, n=1)
    where = f"'{parent_key}'" if parent_key else "the top level"
    hint = f" Did you mean '{parent_key + '.' if parent_key else ''}{close[0]}'?" if close else ""
    return f"{hint} Keys allowed at {where}: {', '.join(sorted(allowed))}."


def _unwrapped(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def mapping_fields(schema: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the fields of ``schema`` (nested sections included) that are mappings."""
    for name, field in schema.model_fields.items():
        annotation = _unwrapped(field.annotation)
        origin = typing.get_origin(annotation) or annotation
        if isinstance(origin, type) and issubclass(origin, Mapping):
            yield f"{prefix}{name}"
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from mapping_fields(annotation, f"{prefix}{name}.")


def _schemas(cfg: DictConfig) -> Iterator[tuple[type[BaseModel], str]]:
    from loops_runner.runner.config import RunnerConfig

    yield RunnerConfig, ""
    target = OmegaConf.select(cfg, "recipe._target_", default=None)
    if isinstance(target, str) and target:
        from loops_runner.errors import UserInputError
        from loops_runner.runner.recipes import load_recipe

        try:
            schema = load_recipe(target).config_schema
        except UserInputError:  # refused with its own message once the config is validated
            return
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            yield schema, "recipe."


def open_mappings(cfg: DictConfig) -> None:
    """Let the free-form mappings of ``cfg`` take keys the YAML does not list."""
    for schema, prefix in _schemas(cfg):
        for path in mapping_fields(schema, prefix):
            if path == "recipe":  # the recipe's own section: its schema says what it holds
                continue
            node = OmegaConf.select(cfg, path, default=None)
            if isinstance(node, DictConfig):
                OmegaConf.set_struct(node, False)


def install() -> None:
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.errors import ConfigCompositionException
    except ImportError:  # pragma: no cover - a Hydra without this internal
        return
    original = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(original, "_loops_wrapped", False):
        return

    def apply_with_suggestions(overrides: list[Any], cfg: DictConfig) -> None:
        open_mappings(cfg)
        try:
            original(overrides, cfg)
        except ConfigCompositionException as error:
            message = str(error)
            if not message.startswith("Could not override"):
                raise
            for override in overrides:
                key = override.key_or_group
                if f"'{key}'" in message:
                    value = override.value()
                    raise ConfigCompositionException(
                        f"Unknown config key '{key}' (value {value!r}).{_suggestion(cfg, key)}\n"
                        f"To add a new key on purpose use +{override.input_line}"
                    ) from error
            raise

    apply_with_suggestions._loops_wrapped = True  # type: ignore[attr-defined]
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply_with_suggestions)  # type: ignore[method-assign]
