"""Friendlier errors for command-line overrides of keys that do not exist.

Hydra refuses ``recipe.learnin_rate=1`` with "Key 'learnin_rate' is not in
struct". We add what a user needs to fix it: the nearest existing key and the
keys allowed there. This wraps one Hydra internal (pinned to hydra-core 1.3);
if that internal ever moves, the wrap is skipped and Hydra's own message stays.
"""

from __future__ import annotations

import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf


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
