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
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from loops_runner.data.batching import length_grouped_batches
from loops_runner.data.chat import RenderedExample, TrainOn, prompt_tokens, render
from loops_runner.data.checks import DataSummary, held_out_count, short_run_notes
from loops_runner.data.conversations import Conversation, DataFormat, read_conversations
from loops_runner.data.sources import SourceConfig
from loops_runner.data.synthetic import conversations as synthetic_conversations
from loops_runner.eval import EvalResult, EvaluatorConfig, SamplingEvaluator, eval_nll
from loops_runner.optim import OptimConfig, adam_params, learning_rate, warmup_steps
from loops_runner.runner.budget import Budget
from loops_runner.runner.context import RunContext
from loops_runner.runner.loop import Cadence, optimizer_metrics
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
    result.update({
        "train / eval examples": f"{len(data.train)} / {len(data.eval)}",
        "steps": steps,
        "checkpoints at steps": Cadence(steps, cfg.eval_every, cfg.save_every).save_steps(),
        "estimated tokens": int(steps * cfg.batch_size * mean_tokens),
        "learning rate": f"{cfg.learning_rate} ({cfg.lr_schedule}, warmup "
                         f"{warmup_steps(cfg, steps)})",
    })
    return result


# -- training --------------------------------------------------------------------


async def evaluate(ctx: RunContext, cfg: Config, data: SftData, step: int
                   ) -> tuple[dict[str, float], list[EvalResult]]:
    """Held-out NLL and the evaluators on the weights of ``step``."""
    rows: SftRows = ctx.data
    scores, results = await ctx.evaluate(cfg.evaluators, step,
                                         heldout=None if rows.builtin else rows.eval)
    nll = await eval_nll(ctx.training_client, data.eval, cfg.batch_size)
    return {"eval/nll": nll, **scores}, results


@dataclass
class Submitted:
    """One step in flight: its futures and what its metrics need."""

    forward_backward: Any
    optim: Any
    tokens: int
    learning_rate: float


async def run(ctx: RunContext, cfg: Config) -> dict[str, Any]:
    data = load_data(cfg, ctx.tokenizer, ctx.data)
    loop = ctx.loop(total_steps(cfg, len(data.train), ctx.budget), eval_every=cfg.eval_every,
                    save_every=cfg.save_every, ahead=cfg.pipeline_depth)
    ctx.metrics.print(f"SFT: {len(data.train)} train / {len(data.eval)} eval examples, "
                      f"{loop.steps} steps of {cfg.batch_size}")
    final_results: list[EvalResult] = []
    if loop.fresh:  # step 0 is the base model: the "before" of every comparison
        loop.log(0, (await evaluate(ctx, cfg, data, 0))[0])
    for step in loop:
        batch = batch_for_step(step, data, cfg, ctx.seed)
        lr = learning_rate(step, cfg, loop.steps)
        submitted = Submitted(
            ctx.training_client.forward_backward([e.to_datum() for e in batch], "cross_entropy"),
            ctx.training_client.optim_step(adam_params(cfg, lr)),
            sum(e.trained_tokens for e in batch), lr)
        for done in loop.submit(step, submitted):
            work = done.work
            metrics = {"train/loss": (await work.forward_backward).loss,
                       "train/tokens": work.tokens,
                       **optimizer_metrics(await work.optim, work.learning_rate)}
            if done.evaluates:
                scores, final_results = await evaluate(ctx, cfg, data, done.step)
                metrics.update(scores)
            loop.log(done.step, metrics, tokens=work.tokens)
    if loop.completed and cfg.num_final_samples:
        final_samples(ctx, cfg, data, final_results)
    return loop.final()


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
