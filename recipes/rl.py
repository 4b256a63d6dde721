"""Reinforcement learning with group-centred advantages (GRPO-style), sync or off-policy.

Reads top to bottom:

1. build the dataset of groups: the bundled arithmetic task, the user's env
   (``recipe.env=module:make_dataset``) or the user's reward function on a prompt
   file (``recipe.reward=module:score`` + ``recipe.prompts=data.jsonl``; the reward
   loads and every prompt row is checked before anything is provisioned, and
   ``eval_prompts`` of them are held out: ``eval/reward`` is the mean reward on
   prompts no step trained on, before training and every ``eval_every`` steps);
   ``recipe.judge=<model | run dir | bt:// URI>`` adds a judge's probability of "yes"
   under ``recipe.judge_rubric`` to every reward (alone on ``recipe.prompts``, or on
   top of a reward or an env); the judge's sampler is provisioned before the first
   step and stopped when the run ends;
2. per step, sample ``groups_per_batch`` prompts × ``group_size`` episodes from the
   current policy's sampler (one ``sample(n=group_size)`` per prompt, all at once;
   with ``max_steps_off_policy: k >= 1`` the next batches are sampled while this
   one trains, from at most ``k`` versions back);
3. score them, centre each group's rewards on its mean (drop groups whose rewards
   are all equal), optionally subtract a KL penalty against the base model;
4. forward_backward + optim_step on exactly the sampled tokens, with the sampler's
   logprobs for the importance ratio (``importance_sampling``, ``ppo``, ``cispo``
   or ``dro``);
5. publish the new weights, so the next samples come from the new policy;
6. log ``rollout/*``, ``kl/*``, ``diag/*`` (why a run learns or not: docs/rl.md),
   ``optim/*`` and ``time/*``, the first groups' transcripts to ``rollouts.jsonl`` and
   the tokens whose sampler and trainer logprobs differ most to ``divergence.jsonl``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from loops_runner.data.checks import MAX_HELD_OUT_FRACTION, DataSummary
from loops_runner.data.sources import BadRowPolicy
from loops_runner.eval import EvaluatorConfig
from loops_runner.optim import OnPolicyOptimConfig, adam_params, learning_rate
from loops_runner.rl import plugins
from loops_runner.rl.advantages import group_advantages, is_constant
from loops_runner.rl.datasets import DatasetSetup
from loops_runner.rl.datums import (
    TokenSequence,
    mean_abs_logprob_diff,
    sampled_logprobs_D,
    trajectory_sequences,
)
from loops_runner.rl.diagnostics import rollout_diagnostics, step_diagnostics
from loops_runner.rl.envs import tasks as task_envs
from loops_runner.rl.judge import (
    DEFAULT_RUBRIC,
    JudgeSettings,
    check_rubric,
    no_reward,
    start_judge,
)
from loops_runner.rl.pipeline import RolloutPipeline
from loops_runner.rl.reference_kl import apply_kl_penalty, reference_logprobs_D
from loops_runner.rl.reporting import (
    DIVERGENCE_FILE,
    ROLLOUTS_FILE,
    error_lines,
    log_divergent_tokens,
    rollout_metrics,
    step_transcripts,
    write_transcripts,
)
from loops_runner.rl.rollouts import RolloutBatch, RolloutSettings, rollout_batch
from loops_runner.rl.teacher import resolve_teacher
from loops_runner.rl.types import RLDataset
from loops_runner.runner.context import RunContext
from loops_runner.runner.loop import optimizer_metrics
from loops_runner.runner.metrics import truncate_after

PolicyLoss = Literal["importance_sampling", "ppo", "cispo", "dro"]
POLICY_NAME = "rl-policy"

# -- configuration (validated, and the user's data and plug-ins loaded, before anything
#    is provisioned) --------------------------------------------------------------------


class Config(OnPolicyOptimConfig):  # learning rate, schedule, AdamW knobs: optim.py
    env: str | None = None
    env_args: dict[str, Any] = Field(default_factory=dict)
    reward: str | None = None
    prompts: str | None = None
    prompts_split: str = "train"
    prompts_bad_rows: BadRowPolicy = "stop"
    eval_prompts: int = Field(default=16, ge=0)
    eval_every: int = Field(default=10, ge=0)
    judge: str | None = Field(default=None, min_length=1)
    judge_rubric: str = DEFAULT_RUBRIC
    judge_positive: str = Field(default="yes", min_length=1)
    judge_negative: str = Field(default="no", min_length=1)
    judge_weight: float = Field(default=1.0, gt=0)
    # none by default (RL's held-out number is eval/reward); [{kind: sampling}]: eval/accuracy
    evaluators: list[EvaluatorConfig] = Field(default_factory=list)

    groups_per_batch: int = Field(default=8, ge=1)
    group_size: int = Field(default=8, ge=2)
    max_steps: int = Field(default=30, ge=1)
    max_steps_off_policy: int = Field(default=0, ge=0)

    max_tokens: int = Field(default=12, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_turns: int = Field(default=8, ge=1)

    loss_fn: PolicyLoss = "importance_sampling"
    loss_fn_config: dict[str, float] = Field(default_factory=dict)
    normalize_advantages_by_std: bool = False
    kl_penalty_coef: float = Field(default=0.0, ge=0)

    max_rollout_error_frac: float = Field(default=0.5, ge=0, le=1)
    num_groups_to_log: int = Field(default=2, ge=0)
    divergent_tokens_to_log: int = Field(default=10, ge=0)
    save_every: int = Field(default=20, ge=0)

    @model_validator(mode="after")
    def _plug_ins_fit(self) -> Config:
        if self.reward is not None and self.prompts is None:
            raise ValueError("recipe.reward scores replies to recipe.prompts: set "
                             "recipe.prompts too")
        if self.prompts is not None and self.reward is None and self.judge is None:
            raise ValueError("recipe.prompts need a reward: recipe.reward=module:score, "
                             "recipe.judge=<model>, or both")
        if self.prompts is not None and self.env is not None:
            raise ValueError("set either recipe.env (your dataset of envs) or recipe.prompts "
                             "(with recipe.reward and/or recipe.judge), not both")
        check_rubric(self.judge_rubric)
        return self


@dataclass
class RewardPrompts:
    """The user's reward and prompt rows, loaded and checked before provisioning."""

    score: Any
    train: list[plugins.PromptRow]
    eval: list[plugins.PromptRow]
    summary: DataSummary
    digest: str


def judge_settings(cfg: Config) -> JudgeSettings | None:
    """The judge as configured (its path or name resolved), or None without one."""
    if cfg.judge is None:
        return None
    return JudgeSettings(resolve_teacher(cfg.judge, key="recipe.judge"), cfg.judge_rubric,
                         cfg.judge_positive, cfg.judge_negative, cfg.judge_weight)


def prepare_data(cfg: Config, seed: int) -> RewardPrompts | None:
    """Load the user's plug-ins and read their prompts; the runner calls this first."""
    judge_settings(cfg)  # a judge path that does not resolve stops the run here
    if cfg.env is not None:
        plugins.load_dataset_factory(cfg.env)
    if cfg.prompts is None:
        return None
    score = plugins.load_reward(cfg.reward) if cfg.reward is not None else no_reward
    rows, raw, skipped, first_problem = plugins.read_prompt_rows(
        cfg.prompts, cfg.prompts_split, cfg.prompts_bad_rows, "recipe.prompts_bad_rows")
    if cfg.reward is not None:
        plugins.check_reward_fits(score, cfg.reward, rows)
    order = list(range(len(rows)))
    random.Random(f"{seed}-rl-eval").shuffle(order)
    held = min(cfg.eval_prompts, int(len(rows) * MAX_HELD_OUT_FRACTION))
    train = [rows[i] for i in order[held:]]
    summary = DataSummary(cfg.prompts, len(raw), len(train), held, skipped, first_problem)
    return RewardPrompts(score, train, [rows[i] for i in order[:held]], summary, raw.digest)


def plan(cfg: Config, tokenizer: Any, budget: Any) -> dict[str, Any]:
    """What ``dry_run=true`` prints."""
    source = cfg.env or (f"{cfg.reward or 'the judge'} on {cfg.prompts}" if cfg.prompts else
                         "bundled arithmetic (task registry)")
    return {"env": source, "judge": cfg.judge or "none", "steps": budget.steps(cfg.max_steps),
            "episodes per step": f"{cfg.groups_per_batch} groups × {cfg.group_size}",
            "loss": cfg.loss_fn, "off-policy steps": cfg.max_steps_off_policy}


# -- 1. the dataset ---------------------------------------------------------------


def build_dataset(cfg: Config, tokenizer: Any, seed: int,
                  prompts: RewardPrompts | None) -> RLDataset:
    setup = DatasetSetup(tokenizer=tokenizer, groups_per_batch=cfg.groups_per_batch, seed=seed)
    if prompts is not None:
        return plugins.reward_dataset(prompts.train, prompts.score, reward_name(cfg), setup)
    factory = plugins.load_dataset_factory(cfg.env) if cfg.env else task_envs.make_dataset
    dataset = factory(setup, **cfg.env_args)
    if not isinstance(dataset, RLDataset) or len(dataset) < 1:
        raise TypeError(f"recipe.env {cfg.env!r} returned {type(dataset).__name__}; expected a "
                        "non-empty loops_runner.rl.types.RLDataset")
    return dataset


def reward_name(cfg: Config) -> str:
    return cfg.reward or "recipe.judge"


# -- 3. advantages and datums ------------------------------------------------------


@dataclass
class TrainingBatch:
    sequences_D: list[TokenSequence]
    advantages_by_group: list[list[float]]
    constant_groups: int


def training_batch(batch: RolloutBatch, cfg: Config) -> TrainingBatch:
    sequences_D: list[TokenSequence] = []
    advantages_by_group: list[list[float]] = []
    constant = 0
    for group in batch.groups:
        rewards_G = group.rewards_G()
        advantages_G = group_advantages(rewards_G,
                                        normalize_std=cfg.normalize_advantages_by_std)
        advantages_by_group.append(advantages_G)
        if is_constant(rewards_G):
            constant += 1
            continue
        for trajectory, advantage in zip(group.trajectories_G, advantages_G, strict=True):
            if not trajectory.failed and trajectory.transitions:
                sequences_D.extend(trajectory_sequences(trajectory, advantage))
    return TrainingBatch(sequences_D, advantages_by_group, constant)


class RolloutErrorRate(RuntimeError):
    """Too many episodes failed: the env or reward is broken, not unlucky."""


def check_error_rate(batch: RolloutBatch, cfg: Config, step: int) -> None:
    episodes = [t for g in batch.groups for t in g.trajectories_G]
    failed = sum(t.failed for t in episodes)
    if episodes and failed / len(episodes) > cfg.max_rollout_error_frac:
        raise RolloutErrorRate(
            f"step {step}: {failed} of {len(episodes)} episodes failed, more than "
            f"recipe.max_rollout_error_frac={cfg.max_rollout_error_frac}. First errors: "
            + " | ".join(error_lines(batch)))


# -- the loop -----------------------------------------------------------------------


@dataclass
class Submitted:  # one step: its rollouts, their advantages and the training futures
    batch: RolloutBatch
    train: TrainingBatch
    metrics: dict[str, float]
    forward_backward: Any  # None when every group was constant (nothing to train)
    optim: Any
    learning_rate: float
    train_started: float


async def run(ctx: RunContext, cfg: Config) -> dict[str, Any]:
    prompts: RewardPrompts | None = ctx.data
    dataset = build_dataset(cfg, ctx.tokenizer, ctx.seed, prompts)
    heldout = (plugins.reward_builders(prompts.eval, prompts.score, reward_name(cfg),
                                       ctx.tokenizer) if prompts is not None else [])
    loop = ctx.loop(cfg.max_steps, eval_every=cfg.eval_every, save_every=cfg.save_every)
    settings = RolloutSettings(
        max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        max_turns=cfg.max_turns, max_context=ctx.max_context, seed=ctx.seed,
        decode=lambda tokens: ctx.tokenizer.decode(tokens, skip_special_tokens=True))
    reference = ctx.sampling_client if cfg.kl_penalty_coef > 0 else None
    loss_fn_config = dict(cfg.loss_fn_config) or None
    truncate_after(ctx.run_dir / ROLLOUTS_FILE, ctx.start_step)
    truncate_after(ctx.run_dir / DIVERGENCE_FILE, ctx.start_step)
    ctx.metrics.print(f"RL: {cfg.groups_per_batch} groups × {cfg.group_size} per step, "
                      f"{loop.steps} steps, {cfg.max_steps_off_policy} steps off-policy at most")

    running = start_judge(ctx.service_client, judge_settings(cfg), ctx.config.timeouts,
                          say=ctx.metrics.print)
    judge = running.judge if running is not None else None

    async def sample_step(step: int, policy: Any) -> RolloutBatch:
        builders = dataset.get_batch(step % len(dataset))
        return await judged(await rollout_batch(builders, cfg.group_size, policy, settings,
                                                step=step), judge)

    pipeline: RolloutPipeline | None = None
    try:
        policy = ctx.publish(POLICY_NAME)
        version = policy.min_policy_version or 0
        if loop.fresh and (heldout or cfg.evaluators):
            loop.log(0, await evaluate(ctx, cfg, heldout, policy, settings, judge, 0))
        # Rollouts are sampled on the pipeline's own thread, up to max_steps_off_policy ahead.
        pipeline = RolloutPipeline(sample_step, policy, first_step=ctx.start_step,
                                   last_step=loop.steps, max_ahead=cfg.max_steps_off_policy)
        for step in loop:
            # 2. rollouts (already sampled ahead in off-policy mode)
            batch = pipeline.next_batch()
            check_error_rate(batch, cfg, step + 1)
            for line in error_lines(batch):
                ctx.metrics.print(f"[yellow]step {step + 1} episode error:[/yellow] {line}")

            # 3. advantages, KL penalty, datums
            train = training_batch(batch, cfg)
            metrics = {**rollout_metrics(batch, version),
                       **rollout_diagnostics(batch, version, cfg.max_steps_off_policy),
                       "rollout/constant_groups": float(train.constant_groups)}
            if reference is not None and train.sequences_D:
                reference_D = await reference_logprobs_D(reference, train.sequences_D)
                metrics["kl/reference"] = apply_kl_penalty(train.sequences_D, reference_D,
                                                           cfg.kl_penalty_coef)

            # 4. train on exactly the sampled tokens
            lr = learning_rate(step, cfg, loop.steps)
            datums_D = [s.to_datum() for s in train.sequences_D]
            started = time.monotonic()
            backward = optim = None
            if datums_D:
                backward = ctx.training_client.forward_backward(datums_D, cfg.loss_fn,
                                                                loss_fn_config=loss_fn_config)
                optim = ctx.training_client.optim_step(adam_params(cfg, lr))
            for done in loop.submit(step, Submitted(batch, train, metrics, backward, optim, lr,
                                                    started)):
                trained, divergent = await trained_metrics(done.work, cfg, settings)
                metrics = done.work.metrics | trained

                # 5. weight sync: the next samples come from the new policy
                if done.work.forward_backward is not None:
                    policy = ctx.publish(POLICY_NAME)
                    version = policy.min_policy_version or version
                pipeline.publish(policy, done.step)

                # 6. evaluate, transcripts, log (the loop checkpoints at its cadence)
                if done.evaluates:
                    metrics.update(await evaluate(ctx, cfg, heldout, policy, settings, judge,
                                                  done.step))
                write_transcripts(ctx.run_dir, step_transcripts(
                    done.step, done.work.batch.groups, done.work.train.advantages_by_group,
                    cfg.num_groups_to_log))
                log_divergent_tokens(ctx.run_dir, ctx.metrics, done.step, divergent)
                loop.log(done.step, metrics)
    finally:
        if pipeline is not None:
            pipeline.close()
        if running is not None:
            running.stop()
    return loop.final()


async def trained_metrics(work: Submitted, cfg: Config, settings: RolloutSettings
                          ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """What the trainer reports of a step (loss metrics, sampler/trainer diagnostics,
    optimizer) and the step's most divergent tokens."""
    metrics = {"train/datums": float(len(work.train.sequences_D))}
    divergent: list[dict[str, Any]] = []
    if work.forward_backward is not None:
        output = await work.forward_backward
        trainer_D = [o["logprobs"].tolist() for o in output.loss_fn_outputs]
        metrics["kl/sample_train"] = mean_abs_logprob_diff(
            sampled_logprobs_D(work.train.sequences_D), trainer_D)
        diagnostics, divergent = step_diagnostics(
            work.train.sequences_D, trainer_D, cfg.loss_fn, dict(cfg.loss_fn_config) or None,
            settings.decode, cfg.divergent_tokens_to_log)
        metrics.update(diagnostics)
        metrics.update({f"train/{k}": v for k, v in (output.metrics or {}).items()})
        metrics.update(optimizer_metrics(await work.optim, work.learning_rate))
    metrics["time/train_s"] = time.monotonic() - work.train_started
    return metrics, divergent


async def judged(batch: RolloutBatch, judge: Any) -> RolloutBatch:
    """The batch with the judge's score added to its rewards (unchanged without a judge)."""
    if judge is not None:
        await judge.reward_batch(batch)
    return batch


async def evaluate(ctx: RunContext, cfg: Config, heldout: list[Any], policy: Any,
                   settings: RolloutSettings, judge: Any, step: int) -> dict[str, float]:
    """``eval/reward`` on the held-out prompts (your reward) and the ``evaluators``."""
    metrics, _ = await ctx.evaluate(cfg.evaluators, step)
    if heldout:
        metrics.update(await heldout_reward(heldout, cfg, policy, settings, judge))
    return metrics


async def heldout_reward(builders: list[Any], cfg: Config, policy: Any,
                         settings: RolloutSettings, judge: Any = None) -> dict[str, float]:
    """Mean reward of ``group_size`` replies to each held-out prompt, from ``policy``; with
    its spread and count, so two evaluations can be compared with a t-test."""
    batch = await judged(await rollout_batch(builders, cfg.group_size, policy, settings,
                                             step=-1), judge)
    rewards = [r for group in batch.groups for r in group.rewards_G() if r == r]  # no NaN
    if not rewards:
        return {"eval/reward": float("nan"), "eval/episodes": 0.0}
    mean = sum(rewards) / len(rewards)
    return {"eval/reward": mean, "eval/episodes": float(len(rewards)),
            "eval/reward_std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5}
