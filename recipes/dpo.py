"""Direct preference optimisation (DPO) on chosen/rejected pairs.

Reads top to bottom:

1. load and check the pairs before anything is provisioned (the bundled task
   pairs, or any file or dataset with prompt/chosen/rejected columns), render
   both sides with the chat template, loss on the response tokens only;
2. compute the base policy's log-probabilities of every sequence once
   (cached in the run dir: a second epoch or a resumed run reuses them);
3. train: each step takes a batch of pairs, builds (chosen, rejected) datums
   with their reference logprobs, and submits the trainer's ``dpo`` loss and
   an optimizer step, futures ahead so the trainer never waits;
4. evaluate every ``eval_every`` steps, before the first and after the last:
   held-out preference accuracy and margin (``eval/dpo/*``) and the
   ``evaluators`` (default: greedy ``eval/accuracy`` on held-out task questions
   with the bundled pairs, or the chosen answers of the held-out pairs on your
   own data), so a gain in preference never hides a lost skill; checkpoint
   every ``save_every`` steps (the cursor is the step).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from loops_runner.data.checks import DataSummary, held_out_count, short_run_notes
from loops_runner.data.preferences import (
    TASKS_SOURCE,
    PairSet,
    PreferencePair,
    RenderedPair,
    load_pairs,
    render_pair,
    task_pairs,
)
from loops_runner.data.reference_logprobs import ReferenceLogprobs, reference_logprobs
from loops_runner.data.sources import DataError, SourceConfig
from loops_runner.eval import EvaluatorConfig, SamplingEvaluator
from loops_runner.optim import OptimConfig, adam_params, learning_rate
from loops_runner.runner.budget import Budget
from loops_runner.runner.context import RunContext
from loops_runner.runner.loop import optimizer_metrics
from loops_runner.wire import Datum, TensorData

# -- configuration (validated before anything starts) --------------------------


class DatasetConfig(SourceConfig):  # source, split and column mapping come from SourceConfig
    source: str = TASKS_SOURCE
    num_pairs: int = Field(default=2048, ge=2)
    eval_pairs: int = Field(default=64, ge=1)
    eval_split: str | None = None
    max_length: int = Field(default=256, ge=2)


class Config(OptimConfig):  # learning rate, schedule and AdamW knobs come from OptimConfig
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    beta: float = Field(default=0.1, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    batch_size: int = Field(default=32, ge=1)
    epochs: int = Field(default=2, ge=1)
    max_steps: int | None = Field(default=120, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=5, ge=0)
    eval_every: int = Field(default=20, ge=0)
    save_every: int = Field(default=20, ge=0)
    pipeline_depth: int = Field(default=2, ge=1)
    evaluators: list[EvaluatorConfig] = Field(
        default_factory=lambda: [SamplingEvaluator(num_prompts=64)])


# -- data ------------------------------------------------------------------------


@dataclass
class Pairs:
    """What ``prepare_data`` read: checked pairs, before any tokenizer is involved."""

    train: list[PreferencePair]
    eval: list[PreferencePair]
    summary: DataSummary
    digest: str  # the pairs' content: part of the run's identity
    builtin: bool = False  # the bundled task pairs (evaluated on the task registry)


def prepare_data(cfg: Config, seed: int) -> Pairs:
    """Read and check every pair; the runner calls this before provisioning."""
    ds = cfg.dataset
    if ds.source == TASKS_SOURCE:
        train, held = task_pairs(ds.num_pairs, "train", seed), task_pairs(ds.eval_pairs,
                                                                          "heldout", seed)
        return Pairs(train, held, DataSummary(ds.source, len(train) + len(held), len(train),
                                              len(held)),
                     f"{TASKS_SOURCE}:{ds.num_pairs}:{ds.eval_pairs}:{seed}", builtin=True)
    loaded = load_pairs(ds.source, split=ds.split, columns=ds.columns, bad_rows=ds.bad_rows)
    if ds.eval_split is not None:
        held = load_pairs(ds.source, split=ds.eval_split, columns=ds.columns,
                          bad_rows=ds.bad_rows)
        summary = DataSummary(ds.source, loaded.read + held.read, len(loaded.pairs),
                              len(held.pairs), loaded.bad_rows + held.bad_rows,
                              loaded.first_problem or held.first_problem)
        return Pairs(loaded.pairs, held.pairs, summary, loaded.digest + held.digest)
    return _hold_out(loaded, cfg, seed)


def _hold_out(loaded: PairSet, cfg: Config, seed: int) -> Pairs:
    eval_pairs, source = cfg.dataset.eval_pairs, cfg.dataset.source
    order = list(range(len(loaded.pairs)))
    random.Random(seed).shuffle(order)
    held = held_out_count(len(order), eval_pairs, source, "preference pairs")
    summary = DataSummary(source, loaded.read, len(order) - held, held, loaded.bad_rows,
                          loaded.first_problem,
                          notes=short_run_notes(cfg, len(order) - held, "train pairs"))
    return Pairs([loaded.pairs[i] for i in order[held:]], [loaded.pairs[i] for i in order[:held]],
                 summary, loaded.digest)


def render_all(tokenizer: Any, pairs: list[PreferencePair], max_length: int
               ) -> tuple[list[RenderedPair], int]:
    """Rendered pairs, and how many were dropped (no response token left, or identical)."""
    rendered = [render_pair(tokenizer, pair, max_length) for pair in pairs]
    kept = [r for r in rendered if r is not None]
    return kept, len(rendered) - len(kept)


def steps_per_epoch(cfg: Config, num_pairs: int) -> int:
    return max(1, num_pairs // cfg.batch_size)


def total_steps(cfg: Config, num_pairs: int, budget: Budget) -> int:
    natural = cfg.epochs * steps_per_epoch(cfg, num_pairs)
    return budget.steps(min(cfg.max_steps, natural) if cfg.max_steps else natural)


def batch_for_step(step: int, pairs: list[RenderedPair], cfg: Config,
                   seed: int) -> list[RenderedPair]:
    """The batch of a 0-based step. A pure function of the step: resuming needs no state."""
    epoch, index = divmod(step, steps_per_epoch(cfg, len(pairs)))
    order = list(range(len(pairs)))
    random.Random(f"{seed}-dpo-epoch-{epoch}").shuffle(order)
    return [pairs[i] for i in order[index * cfg.batch_size:(index + 1) * cfg.batch_size]]


def pair_datums(batch_P: list[RenderedPair], reference: ReferenceLogprobs) -> list[Datum]:
    """Chosen then rejected for each pair: the order the trainer's dpo loss pairs rows by."""
    datums_D = []
    for rendered in batch_P:
        for example in (rendered.chosen, rendered.rejected):
            datum = example.to_trained_datum()  # only the answer's logits are needed
            ref_T = reference.targets(example.tokens)
            datum.loss_fn_inputs["ref_logprobs"] = TensorData(data=ref_T, dtype="float32",
                                                              shape=[len(ref_T)])
            datums_D.append(datum)
    return datums_D


def plan(cfg: Config, tokenizer: Any, budget: Budget) -> dict[str, Any]:
    """What ``dry_run=true`` prints."""
    data = prepare_data(cfg, 0)
    result: dict[str, Any] = {"dataset": cfg.dataset.source,
                              "train / eval pairs": f"{len(data.train)} / {len(data.eval)}",
                              "beta": cfg.beta}
    result["steps"] = total_steps(cfg, len(data.train), budget)
    return result


# -- training --------------------------------------------------------------------

METRIC_NAMES = ("dpo/accuracy", "dpo/margin", "dpo/chosen_reward", "dpo/rejected_reward")


def dpo_metrics(output: Any) -> dict[str, float]:
    metrics = {"dpo/loss": output.loss}
    metrics.update({name: output.metrics[name] for name in METRIC_NAMES if name in output.metrics})
    return metrics


async def eval_preferences(ctx: RunContext, cfg: Config, pairs: list[RenderedPair],
                           reference: ReferenceLogprobs) -> dict[str, float]:
    """Held-out ``eval/dpo/*``: the dpo loss's metrics without a gradient, pair-weighted."""
    loss_config = {"beta": cfg.beta, "label_smoothing": cfg.label_smoothing}
    starts = range(0, len(pairs), cfg.batch_size)
    futures = [ctx.training_client.forward(pair_datums(pairs[i:i + cfg.batch_size], reference),
                                           "dpo", loss_config) for i in starts]
    totals: dict[str, float] = {}
    for start, future in zip(starts, futures, strict=True):
        weight = len(pairs[start:start + cfg.batch_size])
        for name, value in dpo_metrics(await future).items():
            totals[f"eval/{name}"] = totals.get(f"eval/{name}", 0.0) + weight * value
    return {name: total / len(pairs) for name, total in totals.items()}


def chosen_conversations(pairs: list[PreferencePair]) -> list[dict[str, Any]]:
    """The held-out pairs as chats ending in the chosen answer: what the evaluators'
    ``source: auto`` scores on your own pairs (exact match and similarity)."""
    return [{"messages": [*pair.prompt, *pair.chosen]} for pair in pairs]


async def evaluate(ctx: RunContext, cfg: Config, pairs: Pairs, eval_P: list[RenderedPair],
                   reference: ReferenceLogprobs, step: int) -> dict[str, float]:
    heldout = None if pairs.builtin else chosen_conversations(pairs.eval)
    scores, _ = await ctx.evaluate(cfg.evaluators, step, heldout=heldout)
    return await eval_preferences(ctx, cfg, eval_P, reference) | scores


def starting_policy(ctx: RunContext) -> Any:
    """A sampler of the policy before any update: the reference of DPO.

    Before the first step, publishing gives the run's own sampler at version 0,
    which serves the base model; that saves a second sampler process. A resumed
    run has moved on, so it asks for a base-model sampler (only when the cache
    of reference logprobs is gone).
    """
    return ctx.publish("reference") if ctx.start_step == 0 else ctx.sampling_client


@dataclass
class Submitted:
    forward_backward: Any
    optim: Any
    learning_rate: float


async def run(ctx: RunContext, cfg: Config) -> dict[str, Any]:
    pairs: Pairs = ctx.data
    train_P, dropped_train = render_all(ctx.tokenizer, pairs.train, cfg.dataset.max_length)
    eval_P, dropped_eval = render_all(ctx.tokenizer, pairs.eval, cfg.dataset.max_length)
    if dropped_train + dropped_eval:  # invalid rows were counted in the data summary
        ctx.metrics.print(f"DPO: skipped {dropped_train + dropped_eval} pairs empty or "
                          "identical after rendering")
    if not train_P or not eval_P:
        raise DataError(f"{cfg.dataset.source}: no usable pairs after rendering "
                        f"(train {len(train_P)}, eval {len(eval_P)})")
    # Chosen and rejected of the same pair share the prompt, so sequences dedupe well.
    sequences = [e.tokens for r in train_P + eval_P for e in (r.chosen, r.rejected)]
    reference = await reference_logprobs(ctx.base_model, sequences, ctx.run_dir,
                                         lambda: starting_policy(ctx))
    loop = ctx.loop(total_steps(cfg, len(train_P), ctx.budget), eval_every=cfg.eval_every,
                    save_every=cfg.save_every, ahead=cfg.pipeline_depth)
    ctx.metrics.print(f"DPO: {len(train_P)} train / {len(eval_P)} eval pairs, {loop.steps} "
                      f"steps of {cfg.batch_size}; reference logprobs: {reference.computed} "
                      f"sequences computed, cache {reference.path.name}")
    loss_config = {"beta": cfg.beta, "label_smoothing": cfg.label_smoothing}
    if loop.fresh:
        loop.log(0, await evaluate(ctx, cfg, pairs, eval_P, reference, 0))
    for step in loop:
        batch_P = batch_for_step(step, train_P, cfg, ctx.seed)
        lr = learning_rate(step, cfg, loop.steps)
        submitted = Submitted(
            ctx.training_client.forward_backward(pair_datums(batch_P, reference), "dpo",
                                                 loss_config),
            ctx.training_client.optim_step(adam_params(cfg, lr)), lr)
        for done in loop.submit(step, submitted):
            metrics = {**dpo_metrics(await done.work.forward_backward),
                       **optimizer_metrics(await done.work.optim, done.work.learning_rate)}
            if done.evaluates:
                metrics.update(await evaluate(ctx, cfg, pairs, eval_P, reference, done.step))
            loop.log(done.step, metrics)
    return loop.final(**{"reference/computed_sequences": reference.computed})
