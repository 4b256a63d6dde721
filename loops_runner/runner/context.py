"""What a recipe gets: clients, tokenizer, run dir, metrics, checkpointer, RNG, budget.

The recipe contract is one function, ``run(ctx, cfg) -> dict`` of final
metrics. Everything the runner owns (provisioning, resume, outputs, W&B) stays
here, so a recipe only holds training logic.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loops_runner.runner.config import RunnerConfig
from loops_runner.runner.metrics import METRICS_FILE, MetricsLogger, latest_values
from loops_runner.runner.run_record import CheckpointRecord, RunRecord


@dataclass
class Budget:
    """Limits a recipe must respect: a step cap and a wall-clock budget."""

    max_steps: int | None = None
    time_budget_s: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    def steps(self, recipe_steps: int) -> int:
        """The number of steps to run: the recipe's own, capped by the global max_steps."""
        return min(recipe_steps, self.max_steps) if self.max_steps else recipe_steps

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def time_exhausted(self) -> bool:
        return self.time_budget_s is not None and self.elapsed_s() >= self.time_budget_s


class Checkpointer:
    """Resumable checkpoints: trainer state plus the recipe's data cursor and RNG."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    def save(self, step: int, cursor: dict[str, Any] | None = None) -> CheckpointRecord:
        ctx = self._ctx
        saved = ctx.training_client.save_state(f"step-{step:06d}").result()
        record = CheckpointRecord(step=step, path=saved.path, cursor=dict(cursor or {}),
                                  rng_state=_rng_state_to_json(ctx.rng.getstate()))
        ctx.record.checkpoints.append(record)
        ctx.record.save(ctx.run_dir)
        return record

    def latest(self) -> CheckpointRecord | None:
        return self._ctx.record.latest_checkpoint()


def _rng_state_to_json(state: tuple[Any, ...]) -> str:
    # One compact string, so run.json stays readable (the state has 625 ints).
    version, internal, gauss = state
    return json.dumps([version, list(internal), gauss], separators=(",", ":"))


def rng_state_from_json(state: str) -> tuple[Any, ...]:
    version, internal, gauss = json.loads(state)
    return (version, tuple(internal), gauss)


@dataclass
class RunContext:
    config: RunnerConfig
    service_client: Any
    training_client: Any
    run_dir: Path
    metrics: MetricsLogger
    record: RunRecord
    rng: random.Random
    budget: Budget
    # Where a resumed run continues: the step already done and the data cursor.
    start_step: int = 0
    cursor: dict[str, Any] = field(default_factory=dict)
    # The last value of each metric logged up to ``start_step`` (empty for a fresh
    # run), so a resumed recipe reports the same final metrics as an unbroken one.
    logged: dict[str, Any] = field(default_factory=dict)
    # What the recipe's prepare_data returned (None when it has none).
    data: Any = None
    _tokenizer: Any = None
    _sampling_client: Any = None

    def __post_init__(self) -> None:
        self.checkpointer = Checkpointer(self)
        if self.start_step and not self.logged:
            self.logged = latest_values(self.run_dir / METRICS_FILE)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def base_model(self) -> str:
        return self.config.model.base_model

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> Any:
        # The client knows no local model names (``tiny``); servers reached
        # without a control plane (backend=external) keep the configured name,
        # so the runner resolves it here, in the configured data home.
        from loops_runner.models.registry import REGISTRY, resolve_model

        name = self.training_client.base_model
        if name not in REGISTRY:
            return self.training_client.get_tokenizer()
        from loops_runner.home import loops_home
        from loops_runner.sdk.tokenizer import load_tokenizer

        home = loops_home(getattr(self.config.backend, "home", None))
        return load_tokenizer(resolve_model(name, home).load_path)

    @property
    def sampling_client(self) -> Any:
        """A sampler of the base model, provisioned on first use."""
        if self._sampling_client is None:
            self._sampling_client = self.service_client.create_sampling_client(
                self.base_model, timeout=self.config.timeouts.sample_s,
                ready_timeout=self.config.timeouts.ready_s)
        return self._sampling_client

    def publish(self, name: str = "latest") -> Any:
        """Publish the current adapter; return a sampling client that serves it."""
        return self.training_client.save_weights_and_get_sampling_client(name)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.metrics.log(step, metrics)

    def out_of_time(self, step: int, steps: int) -> bool:
        """True, after a resumable checkpoint at ``step``, when the time budget ends the run."""
        if step >= steps or not self.budget.time_exhausted():
            return False
        self.checkpointer.save(step, {"step": step})
        self.metrics.print(f"Time budget reached at step {step}; checkpoint saved.")
        return True
