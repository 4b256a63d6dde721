"""What a recipe gets: clients, tokenizer, run dir, metrics, checkpoints, the loop.

The recipe contract is one function, ``run(ctx, cfg) -> dict`` of final
metrics (``async def`` works too: the runner runs its event loop). Everything
the runner owns (provisioning, resume, the step cadence and time budget,
checkpoint retention, outputs, W&B) stays here and in ``runner.loop``, so a
recipe only holds training logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loops_runner.eval import (
    EvalResult,
    EvalTarget,
    EvaluatorConfig,
    eval_weights_name,
    run_evaluators,
    sampler_for_current_weights,
)
from loops_runner.runner.backends import backend_of
from loops_runner.runner.budget import Budget, BudgetGuard
from loops_runner.runner.config import RunnerConfig
from loops_runner.runner.loop import Cadence, TrainingLoop
from loops_runner.runner.metrics import METRICS_FILE, MetricsLogger, latest_values
from loops_runner.runner.retention import beyond_last
from loops_runner.runner.run_record import CheckpointRecord, RunRecord

__all__ = ["Budget", "Checkpointer", "RunContext"]


class Checkpointer:
    """Resumable checkpoints: trainer state plus the recipe's data cursor.

    After each save, ``checkpoints.keep_last`` decides which earlier ones stay
    (``runner.retention``); ``run.json`` lists only the ones that exist.
    """

    def __init__(self, ctx: RunContext, remove: Callable[[CheckpointRecord], bool] | None,
                 no_delete_note: str) -> None:
        self._ctx = ctx
        self._remove = remove
        self._no_delete_note = no_delete_note
        self._said_no_delete = False

    def save(self, step: int, cursor: dict[str, Any] | None = None) -> CheckpointRecord:
        ctx = self._ctx
        saved = ctx.training_client.save_state(f"step-{step:06d}").result()
        record = CheckpointRecord(step=step, path=saved.path, cursor=dict(cursor or {}))
        # A second save of the same step (e.g. the budget stop on a cadence step) replaces it.
        ctx.record.checkpoints = [c for c in ctx.record.checkpoints if c.step != step]
        ctx.record.checkpoints.append(record)
        self._apply_retention()
        ctx.record.save(ctx.run_dir)
        return record

    def latest(self) -> CheckpointRecord | None:
        return self._ctx.record.latest_checkpoint()

    def _apply_retention(self) -> None:
        record = self._ctx.record
        protected = {record.init_from} if record.init_from else set()
        doomed = beyond_last(record.checkpoints, self._ctx.config.checkpoints.keep_last,
                             protected)
        if not doomed:
            return
        if self._remove is None:
            if not self._said_no_delete:
                self._ctx.metrics.print(f"checkpoints.keep_last: {self._no_delete_note}; "
                                        "keeping every checkpoint")
                self._said_no_delete = True
            return
        removed = {c.path for c in doomed if self._remove(c)}
        record.checkpoints = [c for c in record.checkpoints if c.path not in removed]


@dataclass
class RunContext:
    config: RunnerConfig
    service_client: Any
    training_client: Any
    run_dir: Path
    metrics: MetricsLogger
    record: RunRecord
    budget: Budget
    # Where a resumed run continues: the step already done and the data cursor the
    # recipe saved with that checkpoint (``checkpointer.save(step, cursor)``).
    start_step: int = 0
    cursor: dict[str, Any] = field(default_factory=dict)
    # The last value of each metric logged up to ``start_step`` (empty for a fresh
    # run), so a resumed recipe reports the same final metrics as an unbroken one.
    logged: dict[str, Any] = field(default_factory=dict)
    # What the recipe's prepare_data returned (None when it has none).
    data: Any = None
    # How checkpoints beyond ``checkpoints.keep_last`` leave the data home; None where
    # the service offers no delete (then ``no_delete_note`` says so, once).
    remove_checkpoint: Callable[[CheckpointRecord], bool] | None = None
    no_delete_note: str = "this service offers no checkpoint delete"
    # Why the run stopped before its last step (the time budget), for run.json.
    stop_reason: str | None = None
    loop_running: bool = False
    _tokenizer: Any = None
    _sampling_client: Any = None

    def __post_init__(self) -> None:
        self.checkpointer = Checkpointer(self, self.remove_checkpoint, self.no_delete_note)
        if self.start_step and not self.logged:
            self.logged = latest_values(self.run_dir / METRICS_FILE)
        # Every training call passes the runner's budget guard: a recipe that never
        # looks at the time budget still stops at a step boundary once it has passed.
        self.training_client = BudgetGuard(self.training_client, self.budget, self.start_step,
                                           self.stop_for_budget, lambda: self.loop_running)

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
        from loops_runner.sdk.tokenizer import load_tokenizer

        return load_tokenizer(resolve_model(name, backend_of(self.config).model_home()).load_path)

    @property
    def max_context(self) -> int:
        """The longest sequence the model takes, in tokens (trainer and tokenizer agree)."""
        limit = getattr(self.training_client.get_info(), "max_seq_len", None)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        known = [int(x) for x in (limit, tokenizer_limit) if isinstance(x, int) and 0 < x < 10**8]
        return min(known) if known else 2048

    @property
    def data_home(self) -> Path | None:
        """The data home this process shares with the servers (local backend), else None."""
        return backend_of(self.config).data_home

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

    async def evaluate(self, evaluators: list[EvaluatorConfig], step: int, *,
                       heldout: list[dict[str, Any]] | None = None,
                       other: tuple[str, Any] | None = None
                       ) -> tuple[dict[str, float], list[EvalResult]]:
        """The evaluators on the run's weights of ``step`` (saved for a sampler of their own).

        ``heldout``: the run's held-out chats, what ``source: auto`` scores on your data.
        ``other``: (name, sampler) of another model to score instead (distillation's
        teacher): its sampling evaluators only, as ``eval/<name>/*``.
        """
        if other is not None:
            name, sampler = other
            evaluators = [e for e in evaluators if e.kind == "sampling"]
            target = EvalTarget(model=name, tokenizer=self.tokenizer, training_client=None,
                                sampler=lambda: sampler)
        else:
            target = EvalTarget(
                model=f"{self.record.run_id or self.run_dir.name}@step-{step}",
                tokenizer=self.tokenizer, training_client=self.training_client, heldout=heldout,
                sampler=lambda: sampler_for_current_weights(self.training_client,
                                                            eval_weights_name(step)))
        if not evaluators:
            return {}, []
        results = await run_evaluators(evaluators, target, step=step, run_dir=self.run_dir,
                                       prefix="eval/" if other is None else f"eval/{other[0]}/")
        return {k: v for r in results for k, v in r.metrics.items()}, results

    def loop(self, steps: int, *, eval_every: int = 0, save_every: int = 0,
             ahead: int = 0) -> TrainingLoop[Any]:
        """The shared step loop (``runner.loop``): ``steps`` capped by ``max_steps``."""
        return TrainingLoop(self, Cadence(self.budget.steps(steps), eval_every, save_every),
                            ahead)

    def stop_for_budget(self, step: int) -> None:
        """End the run at ``step`` for the time budget: a resumable checkpoint, one line."""
        latest = self.checkpointer.latest()
        if latest is None or latest.step != step:
            self.checkpointer.save(step)
        budget = self.budget.time_budget_s
        self.stop_reason = f"time_budget_s={budget:g} reached at step {step}"
        self.metrics.stop_progress()
        self.metrics.print(f"Time budget of {budget:g} s reached at step {step}; checkpoint "
                           "saved. Re-run the same command (a larger time_budget_s if you "
                           "like) to continue.")
