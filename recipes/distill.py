"""On-policy distillation: the student samples, the teacher grades every token.

Reads top to bottom:

1. resolve the teacher (a base model, a checkpoint, a ``bt://`` URI or a run dir)
   and load the prompts (the bundled tasks, or a file/dataset with a ``prompt``
   column) before anything is provisioned;
2. provision the teacher's sampler and refuse a teacher whose tokenizer or chat
   template differs from the student's (it must score the student's exact tokens);
3. per step, the student samples ``group_size`` completions of each prompt of the
   batch (on-policy; ``mode: off_policy`` samples the teacher instead);
4. the teacher scores those exact tokens with ``compute_logprobs``; each sampled
   token's advantage is teacher logprob − student logprob (the per-token reverse
   KL), trained with the ``importance_sampling`` loss (off-policy: cross-entropy
   on the teacher's tokens);
5. publish the new student (weight sync every step), log ``rollout/*``;
6. every ``eval_every`` steps, before the first and after the last: held-out
   reverse KL and teacher logprob on the student's samples, and the
   ``evaluators`` (default: greedy ``eval/accuracy`` on held-out task questions),
   which score the teacher once too (``eval/teacher/accuracy``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from loops_runner.data.chat import RenderedExample
from loops_runner.data.checks import DataSummary, check_rows, held_out_count
from loops_runner.data.prompts import prompt_messages
from loops_runner.data.sources import SourceConfig, read_source
from loops_runner.eval import EvaluatorConfig, SamplingEvaluator
from loops_runner.optim import OnPolicyOptimConfig, adam_params, learning_rate
from loops_runner.rl.datums import TokenSequence, trajectory_sequences
from loops_runner.rl.envs.tasks import task_builder
from loops_runner.rl.message_env import MessageEnvGroupBuilder, ProblemEnv
from loops_runner.rl.reference_kl import apply_kl_penalty, reference_logprobs_D
from loops_runner.rl.reporting import rollout_metrics
from loops_runner.rl.rollouts import RolloutBatch, RolloutSettings, rollout_batch
from loops_runner.rl.teacher import (
    TeacherSource,
    check_same_tokens,
    resolve_teacher,
    teacher_sampler,
)
from loops_runner.rl.types import EnvGroupBuilder
from loops_runner.runner.budget import Budget
from loops_runner.runner.context import RunContext
from loops_runner.runner.loop import optimizer_metrics
from loops_runner.tasks import Row, as_messages, sample_rows

TASKS_SOURCE = "tasks"
STUDENT_NAME = "student"
RUN_SFT_FIRST = ("; train it first: python -m loops_runner +recipe=sft, or choose another "
                 "teacher with recipe.teacher=<base model | checkpoint | run dir | bt:// URI>")

# -- configuration (validated before anything starts) --------------------------


class PromptsConfig(SourceConfig):  # source, split and column mapping come from SourceConfig
    source: str = TASKS_SOURCE
    num_prompts: int = Field(default=1024, ge=1)
    eval_prompts: int = Field(default=32, ge=1)


class Config(OnPolicyOptimConfig):  # learning rate, schedule, AdamW knobs: optim.py
    teacher: str = Field(default="outputs/sft/default", min_length=1)
    mode: Literal["on_policy", "off_policy"] = "on_policy"
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    prompts_per_step: int = Field(default=16, ge=1)
    group_size: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=12, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=40, ge=1)
    eval_every: int = Field(default=10, ge=0)
    save_every: int = Field(default=20, ge=0)
    # greedy eval/accuracy on held-out task questions: the student's, and the teacher's once
    evaluators: list[EvaluatorConfig] = Field(
        default_factory=lambda: [SamplingEvaluator(source="tasks", num_prompts=32)])


# -- 1. prompts and teacher ----------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    task: Row | None = None  # the task row, when the answer can be scored


@dataclass
class DistillData:
    train: list[Prompt]
    eval: list[Prompt]
    teacher: TeacherSource
    summary: DataSummary
    digest: str  # the prompts' content: part of the run's identity


def _prompt_of(row: dict[str, Any], where: str) -> Prompt:
    return Prompt(prompt_messages(row, where))


def prepare_data(cfg: Config, seed: int) -> DistillData:
    """Resolve the teacher and read the prompts; the runner calls this before provisioning."""
    teacher = resolve_teacher(cfg.teacher, hint=RUN_SFT_FIRST)
    source = cfg.prompts
    if source.source == TASKS_SOURCE:
        train = [Prompt(as_messages(r), r) for r in sample_rows(source.num_prompts, seed=seed)]
        held = sample_rows(source.eval_prompts, split="heldout", seed=seed, unique=True)
        summary = DataSummary(TASKS_SOURCE, len(train) + len(held), len(train), len(held))
        return DistillData(train, [Prompt(as_messages(r), r) for r in held], teacher, summary,
                           f"{TASKS_SOURCE}:{source.num_prompts}:{source.eval_prompts}:{seed}")
    rows = read_source(source.source, split=source.split, columns=source.columns)
    checked = check_rows(rows, _prompt_of, policy=source.bad_rows,
                         policy_key="recipe.prompts.bad_rows")
    prompts = list(checked.items)
    random.Random(seed).shuffle(prompts)
    held_out = held_out_count(len(prompts), source.eval_prompts, source.source, "prompts")
    summary = DataSummary(source.source, checked.read, len(prompts) - held_out, held_out,
                          checked.skipped, checked.first_problem)
    return DistillData(prompts[held_out:], prompts[:held_out], teacher, summary, rows.digest)


def plan(cfg: Config, tokenizer: Any, budget: Budget) -> dict[str, Any]:
    """What ``dry_run=true`` prints."""
    data = prepare_data(cfg, 0)
    return {"teacher": f"{data.teacher.described} ({data.teacher.kind})", "mode": cfg.mode,
            "train / eval prompts": f"{len(data.train)} / {len(data.eval)}",
            "samples per step": f"{cfg.prompts_per_step} prompts × {cfg.group_size}",
            "steps": budget.steps(cfg.max_steps)}


def _no_reward(reply: str) -> float:
    return 0.0


def prompt_builder(prompt: Prompt, tokenizer: Any) -> EnvGroupBuilder:
    if prompt.task is not None:
        return task_builder(prompt.task, tokenizer)  # reward = the task's checker
    return MessageEnvGroupBuilder(functools.partial(ProblemEnv, prompt.messages, _no_reward),
                                  tokenizer, prompt=prompt.messages[-1]["content"])


def prompts_for_step(step: int, prompts: list[Prompt], cfg: Config, seed: int) -> list[Prompt]:
    """The prompts of a 0-based step. A pure function of the step: resuming needs no state."""
    per_epoch = max(1, len(prompts) // cfg.prompts_per_step)
    epoch, index = divmod(step, per_epoch)
    order = list(range(len(prompts)))
    random.Random(f"{seed}-distill-epoch-{epoch}").shuffle(order)
    start = index * cfg.prompts_per_step
    return [prompts[order[(start + k) % len(order)]] for k in range(cfg.prompts_per_step)]


# -- 3-4. sampling and teacher scoring ---------------------------------------------------


def sampled_sequences(batch: RolloutBatch) -> list[TokenSequence]:
    """Every finished episode as a token sequence (advantages filled in by the teacher)."""
    return [sequence for group in batch.groups for trajectory in group.ok_trajectories()
            if trajectory.transitions for sequence in trajectory_sequences(trajectory, 0.0)]


def mean_teacher_logprob(sequences_D: Sequence[TokenSequence],
                         teacher_D: Sequence[Sequence[float | None]]) -> float:
    values = [lp for s, teacher_T in zip(sequences_D, teacher_D, strict=True)
              for w, lp in zip(s.weights, teacher_T, strict=True) if w and lp is not None]
    return sum(values) / len(values) if values else float("nan")


async def grade(teacher: Any, sequences_D: list[TokenSequence]) -> dict[str, float]:
    """Advantage of each sampled token := teacher logprob − sampler logprob (in place)."""
    teacher_D = await reference_logprobs_D(teacher, sequences_D)
    # With advantages at 0, a KL penalty of weight 1 leaves exactly teacher − student.
    reverse_kl = apply_kl_penalty(sequences_D, teacher_D, 1.0)
    return {"reverse_kl": reverse_kl,
            "teacher_logprob": mean_teacher_logprob(sequences_D, teacher_D)}


async def evaluate(ctx: RunContext, cfg: Config, student: Any, teacher: Any, data: DistillData,
                   settings: RolloutSettings, step: int) -> dict[str, float]:
    """Held-out reverse KL (student ‖ teacher, per token) on the student's own samples,
    and the evaluators on the student's weights of ``step``."""
    builders = [prompt_builder(p, ctx.tokenizer) for p in data.eval]
    # step=-1: the same sampling seeds at every eval, so evals differ only by the student.
    batch = await rollout_batch(builders, 1, student, settings, step=-1)
    graded = await grade(teacher, sampled_sequences(batch))
    scores, _ = await ctx.evaluate(cfg.evaluators, step)
    return {f"distill/{k}": v for k, v in graded.items()} | scores


# -- the loop -----------------------------------------------------------------------


@dataclass
class Submitted:
    metrics: dict[str, float]  # of the rollouts
    forward_backward: Any  # None when nothing was sampled to train on
    optim: Any
    learning_rate: float
    datums: int


async def run(ctx: RunContext, cfg: Config) -> dict[str, Any]:
    data: DistillData = ctx.data
    teacher = teacher_sampler(ctx.service_client, data.teacher, ctx.config.timeouts)
    check_same_tokens(ctx.tokenizer, teacher.get_tokenizer(), cfg.teacher)
    loop = ctx.loop(cfg.max_steps, eval_every=cfg.eval_every, save_every=cfg.save_every)
    settings = RolloutSettings(
        max_tokens=cfg.max_tokens, temperature=cfg.temperature, max_turns=1, seed=ctx.seed,
        decode=lambda tokens: ctx.tokenizer.decode(tokens, skip_special_tokens=True))
    ctx.metrics.print(f"Distill ({cfg.mode}): teacher {data.teacher.described}, "
                      f"{len(data.train)} train / {len(data.eval)} eval prompts, {loop.steps} "
                      f"steps of {cfg.prompts_per_step} × {cfg.group_size} samples")
    student = ctx.publish(STUDENT_NAME)
    if loop.fresh:
        teacher_scores, _ = await ctx.evaluate(cfg.evaluators, 0,
                                               other=("teacher", teacher))
        loop.log(0, await evaluate(ctx, cfg, student, teacher, data, settings, 0)
                 | teacher_scores)
    for step in loop:
        # 3. sample: the student (on-policy) or the teacher (off-policy)
        builders = [prompt_builder(p, ctx.tokenizer)
                    for p in prompts_for_step(step, data.train, cfg, ctx.seed)]
        sampler = student if cfg.mode == "on_policy" else teacher
        batch = await rollout_batch(builders, cfg.group_size, sampler, settings, step=step)
        metrics = rollout_metrics(batch, step)
        sequences_D = sampled_sequences(batch)

        # 4. teacher grades the student's tokens; train on exactly those tokens
        if cfg.mode == "on_policy":
            metrics.update({f"distill/train_{k}": v
                            for k, v in (await grade(teacher, sequences_D)).items()})
            datums_D = [s.to_datum() for s in sequences_D]
            loss_fn = "importance_sampling"
        else:
            datums_D = [RenderedExample(s.tokens, s.weights).to_datum() for s in sequences_D]
            loss_fn = "cross_entropy"
        lr = learning_rate(step, cfg, loop.steps)
        backward = optim = None
        if datums_D:
            backward = ctx.training_client.forward_backward(datums_D, loss_fn)
            optim = ctx.training_client.optim_step(adam_params(cfg, lr))
        for done in loop.submit(step, Submitted(metrics, backward, optim, lr, len(datums_D))):
            metrics = {**done.work.metrics, "train/datums": float(done.work.datums)}
            if done.work.forward_backward is not None:
                metrics["train/loss"] = (await done.work.forward_backward).loss
                metrics.update(optimizer_metrics(await done.work.optim, done.work.learning_rate))

            # 5. weight sync: the next samples come from the new student
            student = ctx.publish(STUDENT_NAME)

            # 6. eval, log (the loop checkpoints at its cadence)
            if done.evaluates:
                metrics.update(await evaluate(ctx, cfg, student, teacher, data, settings,
                                              done.step))
            loop.log(done.step, metrics)
    return loop.final()
