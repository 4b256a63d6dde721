"""Evaluate a base model or checkpoints without training.

Reads top to bottom:

1. list what to evaluate: ``model`` (one), or ``models`` (a comparison on the
   same prompts): ``base``, a checkpoint folder, a run dir (``@name``) or ``bt://``;
2. for each, provision a run holding exactly those weights (a checkpoint is
   loaded into a fresh run of its own rank; ``base`` is the untouched adapter);
3. run the evaluators on it (sampling: task accuracy, pass@k; nll: held-out NLL);
4. write ``eval.json`` (scores with their sampling settings and model ids),
   log the metrics and print one comparison table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from loops_runner.eval import (
    EvalResult,
    EvalTarget,
    EvaluatorConfig,
    NllEvaluator,
    SamplingEvaluator,
    run_evaluators,
    sampler_for_current_weights,
)
from loops_runner.runner.checkpoint_refs import CheckpointRefError, describe, same_model
from loops_runner.runner.config import ConfigError
from loops_runner.runner.context import RunContext
from loops_runner.storage.atomic import atomic_write_json

BASE = "base"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = BASE
    models: list[str] | None = None
    evaluators: list[EvaluatorConfig] = Field(
        default_factory=lambda: [SamplingEvaluator(), NllEvaluator()])


def plan(cfg: Config, tokenizer: Any, budget: Any) -> dict[str, Any]:
    return {"models": ", ".join(cfg.models or [cfg.model]),
            "evaluators": ", ".join(f"{e.kind}:{e.name}" for e in cfg.evaluators)}


def checkpoint_client(ctx: RunContext, reference: str) -> tuple[Any, str]:
    """A fresh run of the base model holding the checkpoint's weights; its path."""
    home = ctx.data_home
    try:
        info = describe(reference, home=home, service=ctx.service_client)
    except CheckpointRefError as error:
        raise ConfigError(f"recipe.model: {error}") from None
    if info.base_model and not same_model(info.base_model, ctx.base_model, home):
        raise ConfigError(f"recipe.model {reference!r} was trained on {info.base_model!r}; "
                          f"evaluate it with model.base_model={info.base_model}")
    timeouts = ctx.config.timeouts
    client = ctx.service_client.create_lora_training_client(
        ctx.base_model, rank=info.rank or ctx.config.model.rank, seed=ctx.seed,
        timeout=timeouts.call_s, ready_timeout=timeouts.ready_s)
    client.load_state(info.path).result()
    return client, info.path


async def evaluate_one(ctx: RunContext, cfg: Config, reference: str, index: int
                       ) -> list[EvalResult]:
    if reference == BASE:
        # The runner's fresh run: LoRA B starts at zero, so it is the base model.
        client, label, owned = ctx.training_client, ctx.base_model, False
    else:
        (client, label), owned = checkpoint_client(ctx, reference), True
    try:
        target = EvalTarget(model=label, tokenizer=ctx.tokenizer, training_client=client,
                            sampler=lambda: sampler_for_current_weights(client, f"eval-{index}"))
        return await run_evaluators(cfg.evaluators, target, step=None, run_dir=ctx.run_dir)
    finally:
        if owned:
            client.close()


async def run(ctx: RunContext, cfg: Config) -> dict[str, Any]:
    references = cfg.models or [cfg.model]
    results_M: list[list[EvalResult]] = []
    for index, reference in enumerate(references):
        ctx.metrics.print(f"evaluating {reference}")
        results = await evaluate_one(ctx, cfg, reference, index)
        results_M.append(results)
        ctx.log(index, {k: v for r in results for k, v in r.metrics.items()})

    metric_names = sorted({k for results in results_M for r in results for k in r.metrics})
    # One row per metric, one column per model: metrics (per family too) outnumber
    # the models compared, and a terminal is taller than it is wide.
    table = Table(title="eval")
    table.add_column("metric")
    for reference in references:
        table.add_column(reference, justify="right", overflow="fold")
    scores_M = [{k: v for r in results for k, v in r.metrics.items()} for results in results_M]
    for name in metric_names:
        table.add_row(name, *(f"{scores[name]:.4f}" if name in scores else "-"
                              for scores in scores_M))
    ctx.metrics.console.print(table)
    atomic_write_json(ctx.run_dir / "eval.json", {
        "base_model": ctx.base_model,
        "models": [{"reference": reference, "results": [r.record() for r in results]}
                   for reference, results in zip(references, results_M, strict=True)],
    })
    first = {k: v for r in results_M[0] for k, v in r.metrics.items()}
    if len(references) == 1:
        return first
    return {f"{reference}/{k}": v for reference, results in zip(references, results_M,
                                                                 strict=True)
            for r in results for k, v in r.metrics.items()}
