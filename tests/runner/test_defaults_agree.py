"""Every default the shipped YAML states is the schema's own default.

The YAML in conf/ shows a user each knob with its value; the pydantic schemas
(runner config, backends, W&B, each recipe's ``Config``) apply when a key is
left out. They must say the same, or a run would depend on whether a value
came from the file or from the code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel

from loops_runner.runner import config as runner_config

CONF = Path(__file__).resolve().parents[2] / "conf"
NOT_SETTINGS = {"defaults", "hydra", "_target_"}
BACKENDS = {"local": runner_config.LocalBackend, "baseten": runner_config.BasetenBackend,
            "external": runner_config.ExternalBackend}


def _yaml(path: Path) -> dict[str, Any]:
    loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(loaded, dict)
    return loaded


def _list_of_models(value: Any) -> bool:
    return isinstance(value, list) and bool(value) \
        and all(isinstance(item, BaseModel) for item in value)


def disagreements(stated: dict[str, Any], schema: type[BaseModel], where: str) -> list[str]:
    found = []
    for key, value in stated.items():
        if key in NOT_SETTINGS:
            continue
        field = schema.model_fields.get(key)
        if field is None:
            found.append(f"{where}.{key}: not a field of {schema.__name__}")
            continue
        if field.is_required() or value == "???":
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel) and isinstance(value, dict):
            found += disagreements(value, type(default), f"{where}.{key}")
        elif _list_of_models(default) and isinstance(value, list) \
                and len(value) == len(default) and all(isinstance(v, dict) for v in value):
            # e.g. a recipe's default evaluators: each stated item against its model.
            for index, (item, model) in enumerate(zip(value, default, strict=True)):
                found += [f"{where}.{key}[{index}].{name}: YAML says {stated!r}, "
                          f"{type(model).__name__} {getattr(model, name, None)!r}"
                          for name, stated in item.items()
                          if getattr(model, name, None) != stated]
        elif value != default:
            found.append(f"{where}.{key}: YAML says {value!r}, {schema.__name__} {default!r}")
    return found


def test_the_root_config_states_the_runner_defaults() -> None:
    assert disagreements(_yaml(CONF / "config.yaml"), runner_config.RunnerConfig,
                         "config") == []


@pytest.mark.parametrize("path", sorted((CONF / "backend").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_backend_states_its_schema_defaults(path: Path) -> None:
    stated = _yaml(path)
    assert disagreements(stated, BACKENDS[stated["kind"]], f"backend/{path.stem}") == []


@pytest.mark.parametrize("path", sorted((CONF / "wandb").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_wandb_choice_differs_only_in_its_mode(path: Path) -> None:
    # The other keys stay in each file so that `wandb.project=...` can override
    # them (Hydra refuses keys a config does not have); they must be the defaults.
    stated = _yaml(path)
    assert set(stated) == {"mode", "project", "entity", "name", "client_run"}
    del stated["mode"]
    assert disagreements(stated, runner_config.WandbSection, f"wandb/{path.stem}") == []


# The base YAML of each recipe (the one naming its _target_); variants such as
# rl_calculator inherit it through `defaults:` and override on purpose.
BASE_RECIPE_YAMLS = sorted(p for p in (CONF / "recipe").glob("*.yaml")
                           if "_target_" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", BASE_RECIPE_YAMLS, ids=lambda p: p.stem)
def test_each_recipe_yaml_states_its_config_defaults(path: Path) -> None:
    stated = _yaml(path)
    module = importlib.import_module(stated["_target_"].rsplit(".", 1)[0])
    assert disagreements(stated, module.Config, f"recipe/{path.stem}") == []


def test_a_list_of_models_is_compared_item_by_item() -> None:
    class Item(BaseModel):
        n: int = 1
        m: int = 2

    class Holder(BaseModel):
        items: list[Item] = [Item(), Item(n=3)]

    assert disagreements({"items": [{"n": 1}, {"n": 3, "m": 2}]}, Holder, "h") == []
    assert disagreements({"items": [{"n": 1}, {"n": 4}]}, Holder, "h") == [
        "h.items[1].n: YAML says 4, Item 3"]


def test_a_disagreement_is_reported_with_both_values() -> None:
    found = disagreements({"timeouts": {"call_s": 5.0}, "sed": 1}, runner_config.RunnerConfig,
                          "config")
    assert found == ["config.timeouts.call_s: YAML says 5.0, Timeouts 600.0",
                     "config.sed: not a field of RunnerConfig"]


def unstated(stated: dict[str, Any], schema: type[BaseModel], where: str) -> list[str]:
    """Fields the YAML leaves out: Hydra would refuse `key=value` for them without `+`."""
    found = []
    for key, field in schema.model_fields.items():
        if key not in stated:
            found.append(f"{where}.{key}")
            continue
        default = field.get_default(call_default_factory=True) if not field.is_required() \
            else None
        if isinstance(default, BaseModel) and isinstance(stated[key], dict):
            found += unstated(stated[key], type(default), f"{where}.{key}")
    return found


@pytest.mark.parametrize("path", BASE_RECIPE_YAMLS, ids=lambda p: p.stem)
def test_each_recipe_yaml_states_every_key_so_overrides_need_no_plus(path: Path) -> None:
    stated = _yaml(path)
    module = importlib.import_module(stated["_target_"].rsplit(".", 1)[0])
    assert unstated(stated, module.Config, f"recipe/{path.stem}") == []


def test_the_root_config_states_every_key() -> None:
    assert unstated(_yaml(CONF / "config.yaml"), runner_config.RunnerConfig, "config") == [
        "config.backend", "config.model", "config.wandb", "config.recipe"]  # config groups
