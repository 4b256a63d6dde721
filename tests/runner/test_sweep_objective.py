"""objective=: what a sweep job hands to Hydra's sweeper."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from loops_runner.runner.app import sweep_value
from loops_runner.runner.config import ConfigError


def test_objective_returns_one_float_for_optimising_sweepers() -> None:
    final = {"eval/nll": 4.5, "train/loss": 4.0}
    assert sweep_value(OmegaConf.create({"objective": None}), final) == final
    assert sweep_value(OmegaConf.create({"objective": "eval/nll"}), final) == 4.5
    with pytest.raises(ConfigError, match="'eval/acc' is not among the final metrics"):
        sweep_value(OmegaConf.create({"objective": "eval/acc"}), final)
