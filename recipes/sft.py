"""Supervised fine-tuning (SFT) on chat data, with an assistant-only loss.

Reads top to bottom:

1. read and check every conversation (built-in synthetic data, a local file, or a
   dataset name) before anything is provisioned, hold out an eval split, then render
   everything with the tokenizer's chat template;
2. train: length-grouped batches, a warmup + decay learning-rate schedule, and
   futures submitted ahead so the trainer never waits for the client;
3. evaluate every ``eval_every`` steps (and before the first step): NLL on the
   held-out split, plus the ``evaluators`` (default: greedy answers scored against
   the references of the held-out rows on your own data, or the task registry's
   held-out questions on the built-in data, through the sampler); checkpoint every
   ``save_every`` steps (resumable: the data cursor is the step);
4. log a few of the final evaluation's samples, marked ✓/✗ by the scorer.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from loops_runner.data.batching import length_grouped_batches
from loops_runner.data.chat import RenderedExample, TrainOn, prompt_tokens, render
from loops_runner.data.checks import DataSummary, held_out_count, short_run_notes
from loops_runner.data.conversations import Conversation, DataFormat, read_conversations
from loops_runner.data.sources import SourceConfig
from loops_runner.data.synthetic import conversations as synthetic_conversations
from loops_runner.eval import (
    EvalResult,
    EvalTarget,
    EvaluatorConfig,
    SamplingEvaluator,
    run_evaluators,
    sampler_for_current_weights,
)
from loops_runner.eval import eval_nll as nll_of
from loops_runner.optim import OptimConfig, adam_params, learning_rate, warmup_steps
from loops_runner.runner.context import Budget, RunContext
from loops_runner.sdk import ModelInput, SamplingParams

# -- configuration (validated before anything starts) --------------------------


SYNTHETIC = "synthetic"


class DatasetConfig(SourceConfig):  # source, split, columns, bad_rows come from SourceConfig
    source: str = SYNTHETIC
    format: DataFormat = "auto"
    roles: dict[str, str] = Field(default_factory=dict)  # rename roles {theirs: ours}
    num_examples: int = Field(default=2000, ge=2)
    eval_examples: int = Field(default=64, ge=1)
    max_length: int = Field(default=256, ge=2)


class Config(OptimConfig):  # learning rate, schedule and AdamW knobs come from OptimConfig
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    train_on: TrainOn = "assistant"
    batch_size: int = Field(default=32, ge=1)
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=150, ge=1)
    length_grouping: int = Field(default=8, ge=1)
    eval_every: int = Field(default=25, ge=0)
    evaluators: list[EvaluatorConfig] = Field(default_factory=lambda: [SamplingEvaluator()])
    save_every: int = Field(default=50, ge=0)
    pipeline_depth: int = Field(default=2, ge=1)
    num_final_samples: int = Field(default=6, ge=0)
    sample_max_tokens: int = Field(default=24, ge=1)
    sample_temperature: float = Field(default=0.0, ge=0)


# -- data ------------------------------------------------------------------------


@dataclass
class SftRows:
    """What ``prepare_data`` read and checked, split, before any tokenizer is involved."""

    train: list[Conversation]
    eval: list[Conversation]
    summary: DataSummary
    digest: str  # the rows' content: part of the run's identity
    builtin: bool  # the built-in task data (scored on the task registry)


@dataclass
class SftData:
    train: list[RenderedExample]
    eval: list[RenderedExample]
    eval_conversations: list[dict[str, Any]]


def prepare_data(cfg: Config, seed: int) -> SftRows:
    """Read, check and split every conversation; the runner calls this before provisioning."""
    ds = cfg.dataset
    if ds.source == SYNTHETIC:
        chats = synthetic_conversations(ds.num_examples, seed=seed)
        read, skipped, first_problem = len(chats), 0, None
        digest = f"{SYNTHETIC}:{ds.num_examples}:{seed}"
    else:
        checked, digest = read_conversations(ds.source, ds.format, split=ds.split,
                                             columns=ds.columns, roles=ds.roles,
                                             bad_rows=ds.bad_rows)
        chats, read = checked.items, checked.read
        skipped, first_problem = checked.skipped, checked.first_problem
    order = list(range(len(chats)))
    random.Random(seed).shuffle(order)
    held = held_out_count(len(chats), ds.eval_examples, ds.source, "conversations")
    train = [chats[i] for i in order[held:]]
    summary = DataSummary(ds.source, read, len(train), held, skipped, first_problem,
                          notes=short_run_notes(cfg, len(train), "train rows"))
    return SftRows(train, [chats[i] for i in order[:held]], summary, digest,
                   builtin=ds.source == SYNTHETIC)


def load_data(cfg: Config, tokenizer: Any, rows: SftRows) -> SftData:
    def rendered(chats: list[Conversation]) -> list[RenderedExample]:
        examples = [render(tokenizer, chat["messages"], cfg.train_on, cfg.dataset.max_length)
                    for chat in chats]
        return [e for e in examples if e.trained_tokens > 0]

    return SftData(rendered(rows.train), rendered(rows.eval), rows.eval)


def steps_per_epoch(cfg: Config, data_size: int) -> int:
    return max(1, data_size // cfg.batch_size)


def total_steps(cfg: Config, data_size: int, budget: Budget) -> int:
    natural = cfg.epochs * steps_per_epoch(cfg, data_size)
    return budget.steps(min(cfg.max_steps, natural) if cfg.max_steps else natural)


def batch_for_step(step: int, data: SftData, cfg: Config, seed: int) -> list[RenderedExample]:
    """The batch of a 0-based step. A pure function of the step: resuming needs no state."""
    per_epoch = steps_per_epoch(cfg, len(data.train))
    epoch, index = divmod(step, per_epoch)
    batches = length_grouped_batches([len(e.tokens) for e in data.train], cfg.batch_size,
                                     cfg.length_grouping, random.Random(f"{seed}-epoch-{epoch}"))
    return [data.train[i] for i in batches[index % len(batches)]]


def plan(cfg: Config, tokenizer: Any, budget: Budget) -> dict[str, Any]:
    """What ``dry_run=true`` prints."""
    result: dict[str, Any] = {"dataset": cfg.dataset.source, "batch size": cfg.batch_size}
    if tokenizer is None:
        return result
    data = load_data(cfg, tokenizer, prepare_data(cfg, 0))
    steps = total_steps(cfg, len(data.train), budget)
    mean_tokens = sum(len(e.tokens) for e in data.train) / max(1, len(data.train))
    saves = [s for s in range(1, steps + 1) if cfg.save_every and s % cfg.save_every == 0]
    result.update({
        "train / eval examples": f"{len(data.train)} / {len(data.eval)}",
        "steps": steps,
        "checkpoints at steps": saves + ([steps] if steps not in saves else []),
        "estimated tokens": int(steps * cfg.batch_size * mean_tokens),
        "learning rate": f"{cfg.learning_rate} ({cfg.lr_schedule}, warmup "
                         f"{warmup_steps(cfg, steps)})",
    })
    return result


# -- training --------------------------------------------------------------------


def eval_nll(ctx: RunContext, examples: list[RenderedExample], batch_size: int) -> float:
    """Mean negative log-likelihood per trained token on ``examples``."""
    return nll_of(ctx.training_client, examples, batch_size)


def evaluate(ctx: RunContext, cfg: Config, step: int) -> tuple[dict[str, float], list[EvalResult]]:
    """Run the recipe's evaluators on the weights of ``step`` (published to the sampler)."""
    if not cfg.evaluators:
        return {}, []
    rows: SftRows = ctx.data
    target = EvalTarget(model=f"{ctx.record.run_id or ctx.run_dir.name}@step-{step}",
                        tokenizer=ctx.tokenizer, training_client=ctx.training_client,
                        sampler=lambda: sampler_for_current_weights(ctx.training_client,
                                                                    f"eval-step-{step}"),
                        heldout=None if rows.builtin else rows.eval)
    results = run_evaluators(cfg.evaluators, target, step=step, run_dir=ctx.run_dir)
    return {k: v for r in results for k, v in r.metrics.items()}, results


@dataclass
class InFlight:
    step: int  # 1-based number of the optimizer step
    forward_backward: Any
    optim: Any
    tokens: int
    learning_rate: float
    submitted_at: float


def run(ctx: RunContext, cfg: Config) -> dict[str, Any]:
    data = load_data(cfg, ctx.tokenizer, ctx.data)
    steps = total_steps(cfg, len(data.train), ctx.budget)
    ctx.metrics.print(f"SFT: {len(data.train)} train / {len(data.eval)} eval examples, "
                      f"{steps} steps of {cfg.batch_size}")
    last: dict[str, Any] = dict(ctx.logged)  # a resumed run's metrics so far
    final_results: list[EvalResult] = []
    if ctx.start_step == 0:
        # Step 0 is the base model: the "before" of every before/after comparison.
        last["eval/nll"] = eval_nll(ctx, data.eval, cfg.batch_size)
        scores, _ = evaluate(ctx, cfg, 0)
        last.update(scores)
        ctx.log(0, {"eval/nll": last["eval/nll"], **scores})
    ctx.metrics.start_progress(steps, completed=ctx.start_step)
    in_flight: deque[InFlight] = deque()
    previous_done = time.monotonic()

    def finish(item: InFlight) -> None:
        nonlocal previous_done, final_results
        output = item.forward_backward.result()
        optim = item.optim.result()
        now = time.monotonic()
        metrics = {"train/loss": output.loss, "train/tokens": item.tokens,
                   "optim/lr": item.learning_rate,
                   "time/step_s": now - previous_done,
                   "time/tokens_per_s": item.tokens / max(now - previous_done, 1e-9)}
        for key, value in (optim.metrics or {}).items():
            if key in ("grad_norm", "grad_norm_clipped", "update_norm"):
                metrics[f"optim/{key}"] = value
        previous_done = now
        step = item.step
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == steps:
            metrics["eval/nll"] = eval_nll(ctx, data.eval, cfg.batch_size)
            scores, final_results = evaluate(ctx, cfg, step)
            metrics.update(scores)
        last.update(metrics)
        ctx.log(step, metrics)
        if (cfg.save_every and step % cfg.save_every == 0) or step == steps:
            ctx.checkpointer.save(step, {"step": step})

    def boundary(step: int) -> bool:
        return bool(step == steps or (cfg.eval_every and step % cfg.eval_every == 0)
                    or (cfg.save_every and step % cfg.save_every == 0))

    step = ctx.start_step
    while step < steps:
        batch = batch_for_step(step, data, cfg, ctx.seed)
        lr = learning_rate(step, cfg, steps)
        adam = adam_params(cfg, lr)
        in_flight.append(InFlight(
            step + 1,
            ctx.training_client.forward_backward([e.to_datum() for e in batch], "cross_entropy"),
            ctx.training_client.optim_step(adam),
            sum(e.trained_tokens for e in batch), lr, time.monotonic()))
        step += 1
        # Eval and checkpoints must see exactly this step's weights: drain first.
        drain = boundary(step) or ctx.budget.time_exhausted()
        while in_flight and (drain or len(in_flight) > cfg.pipeline_depth):
            finish(in_flight.popleft())
        if ctx.out_of_time(step, steps):
            break

    ctx.metrics.stop_progress()
    final = {k: v for k, v in last.items() if not k.startswith("time/")}
    final["steps"] = step
    if step == steps and cfg.num_final_samples:
        final_samples(ctx, cfg, data, final_results)
    return final


def cross_section(samples: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` samples that cover the task families in turn (the first of each family,
    then the second of each, ...), so a few lines show every family, not the first
    family of the eval set; samples without a family are spread evenly instead."""
    if count >= len(samples):
        return list(samples)
    by_family: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        by_family.setdefault(str(sample.get("family")), []).append(sample)
    if len(by_family) == 1:
        return [samples[i * len(samples) // count] for i in range(count)]
    ordered = [group[i] for i in range(max(map(len, by_family.values())))
               for group in by_family.values() if i < len(group)]
    return ordered[:count]


def final_samples(ctx: RunContext, cfg: Config, data: SftData,
                  results: list[EvalResult]) -> None:
    """Log a few final completions, marked ✓/✗ by the last evaluation's scorer.

    They come from the rows the evaluation answered: the user's held-out rows next
    to their references on the user's own data, the task registry's questions on
    the built-in data. Without a sampling evaluator: publish the adapter and
    answer the held-out prompts unscored.
    """
    scored = next((r.samples for r in results if r.samples), None)
    if scored is not None:
        rows = [[s["prompt"], str(s["answer"]), s["completion"], s["score"]]
                for s in cross_section(scored, cfg.num_final_samples)]
    else:
        sampler = ctx.publish("final")
        params = SamplingParams(max_tokens=cfg.sample_max_tokens,
                                temperature=cfg.sample_temperature, seed=ctx.seed)
        rows = []
        for conversation in data.eval_conversations[:cfg.num_final_samples]:
            messages = conversation["messages"]
            prompt = ModelInput.from_ints(prompt_tokens(ctx.tokenizer, messages))
            sequence = sampler.sample(prompt, 1, params).sequences[0]
            completion = ctx.tokenizer.decode(sequence.tokens, skip_special_tokens=True)
            rows.append([messages[-2]["content"], messages[-1]["content"], completion, None])
    with (ctx.run_dir / "samples.jsonl").open("w") as handle:
        for prompt_text, reference, completion, score in rows:
            handle.write(json.dumps({"prompt": prompt_text, "reference": reference,
                                     "completion": completion, "score": score}) + "\n")
    ctx.metrics.log_table("samples", ["prompt", "reference", "completion", "score"], rows)
    for prompt_text, reference, completion, score in rows:
        mark = "" if score is None else ("✓ " if score >= 1.0 else "✗ ")
        ctx.metrics.print(f"{mark}[bold]{prompt_text}[/bold] -> {completion!r} (reference "
                          f"{reference!r})")
