"""Optimizer settings every training recipe shares: AdamW knobs and the LR schedule.

One pydantic base (:class:`OptimConfig`) so a recipe's YAML keys, their
validation and the schedule's math live in one place; a recipe subclasses it
and overrides a default (e.g. its peak ``learning_rate``) where it differs.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from loops_runner.sdk import AdamParams


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=2e-3, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(default=10, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip_norm: float = Field(default=1.0, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)


class OnPolicyOptimConfig(OptimConfig):
    """The defaults of the recipes that train on samples from the policy itself (rl, distill).

    Each step's batch is fresh from the current weights, so these recipes start
    at a lower, constant rate with no warmup; one class keeps their defaults
    (and the YAML files that state them) from drifting apart.
    """

    learning_rate: float = Field(default=1e-3, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)


# Warmup never takes more than this share of a run: 10 warmup steps of a 12-step run
# on small data would train at a fraction of the rate almost throughout.
MAX_WARMUP_FRACTION = 0.2


def warmup_steps(cfg: OptimConfig, steps: int) -> int:
    """The warmup a run of ``steps`` gets: ``cfg.warmup_steps``, capped at a fifth of the run."""
    return min(cfg.warmup_steps, int(steps * MAX_WARMUP_FRACTION))


def learning_rate(step: int, cfg: OptimConfig, steps: int) -> float:
    """Linear warmup to the peak, then constant / linear / cosine decay to the floor."""
    warmup = warmup_steps(cfg, steps)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (step - warmup) / max(1, steps - warmup)
    if cfg.lr_schedule == "linear":
        shape = 1 - progress
    else:
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def adam_params(cfg: OptimConfig, lr: float) -> AdamParams:
    return AdamParams(learning_rate=lr, beta1=cfg.beta1, beta2=cfg.beta2,
                      weight_decay=cfg.weight_decay, grad_clip_norm=cfg.grad_clip_norm)
