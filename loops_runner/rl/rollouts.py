"""Sampling groups of episodes from the current policy.

Every episode of a group that sees the same observation is sampled by one
``sample(n=...)`` call (on the first turn: the whole group), and every group of
a step is in flight at once, so the sampler batches them. An episode whose env
raises, whose reward is not a finite number, whose prompt does not fit the
model's context, or whose sample request fails is marked failed with a clear
message: it is counted and logged, never trained on, and the run goes on.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loops_runner.rl.types import (
    EnvGroupBuilder,
    Observation,
    StepResult,
    Trajectory,
    TrajectoryGroup,
    Transition,
    check_reward,
)
from loops_runner.wire import ModelInput, SamplingParams


@dataclass(frozen=True)
class RolloutSettings:
    """How episodes are sampled."""

    max_tokens: int  # new tokens per turn
    temperature: float = 1.0
    top_p: float = 1.0
    max_turns: int = 16  # an episode still running after this many turns fails
    max_context: int = 2048  # observation + sampled tokens must fit in this
    seed: int | None = None
    decode: Callable[[list[int]], str] = field(default=lambda tokens: str(tokens))


@dataclass
class RolloutBatch:
    """The groups of one training step and how they were sampled."""

    step: int  # 0-based index of the batch (= the training step it is for)
    groups: list[TrajectoryGroup]
    sample_s: float
    policy_version: int  # the oldest policy version any of its episodes was sampled with


def _short(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(error)).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _episode_seed(seed: int | None, *parts: int) -> int | None:
    if seed is None:
        return None
    value = seed
    for part in parts:
        value = (value * 1_000_003 + part) & 0x7FFF_FFFF_FFFF
    return value


async def _sample_bucket(policy: Any, observation: Observation, count: int,
                         settings: RolloutSettings, stop: list[str] | None,
                         seed: int | None) -> Any:
    room = settings.max_context - len(observation)
    if room < 1:
        raise ValueError(f"prompt of {len(observation)} tokens does not fit the model's "
                         f"context of {settings.max_context} tokens")
    params = SamplingParams(max_tokens=min(settings.max_tokens, room),
                            temperature=settings.temperature, top_p=settings.top_p,
                            seed=seed, stop=stop)
    return await policy.sample_async(ModelInput.from_ints(observation), count, params)


def _take_step(env: Any, action: list[int]) -> StepResult:
    result = env.step(action)
    if not isinstance(result, StepResult):
        raise TypeError(f"{type(env).__name__}.step returned {type(result).__name__}, "
                        "expected a StepResult")
    result.reward = check_reward(result.reward, f"{type(env).__name__}.step (reward)")
    return result


async def rollout_group(builder: EnvGroupBuilder, group_size: int, policy: Any,
                        settings: RolloutSettings, *, step: int = 0,
                        group: int = 0) -> TrajectoryGroup:
    """Run ``group_size`` episodes of ``builder``'s problem to the end."""
    trajectories_G = [Trajectory() for _ in range(group_size)]
    prompt = ""
    try:
        prompt = builder.prompt_text()
        envs = list(builder.make_envs(group_size))
        if len(envs) != group_size:
            raise ValueError(f"make_envs({group_size}) returned {len(envs)} envs")
    except Exception as error:  # the whole group fails, the run goes on
        for trajectory in trajectories_G:
            trajectory.error = f"make_envs: {_short(error)}"
        return TrajectoryGroup(trajectories_G, prompt=prompt, completions_G=[""] * group_size)

    observations: list[Observation | None] = []
    for env, trajectory in zip(envs, trajectories_G, strict=True):
        try:
            observations.append(list(env.initial_observation()))
        except Exception as error:
            trajectory.error = f"initial_observation: {_short(error)}"
            observations.append(None)

    turn = 0
    while any(o is not None for o in observations):
        if turn >= settings.max_turns:
            for index, observation in enumerate(observations):
                if observation is not None:
                    trajectories_G[index].error = (f"episode still running after max_turns="
                                                   f"{settings.max_turns} turns")
            break
        buckets: dict[tuple[int, ...], list[int]] = {}
        for index, observation in enumerate(observations):
            if observation is not None:
                buckets.setdefault(tuple(observation), []).append(index)
        keys = list(buckets)
        replies = await asyncio.gather(*(
            _sample_bucket(policy, list(key), len(buckets[key]), settings,
                           envs[buckets[key][0]].stop_sequences(),
                           _episode_seed(settings.seed, step, group, turn, number))
            for number, key in enumerate(keys)), return_exceptions=True)
        for key, reply in zip(keys, replies, strict=True):
            members = buckets[key]
            if isinstance(reply, BaseException):
                for index in members:
                    trajectories_G[index].error = f"sample: {_short(reply)}"
                    observations[index] = None
                continue
            version = int(reply.policy_version if reply.policy_version is not None
                          else (getattr(policy, "min_policy_version", None) or 0))
            for index, sequence in zip(members, reply.sequences, strict=True):
                trajectory = trajectories_G[index]
                trajectory.policy_version = version if turn == 0 else \
                    min(trajectory.policy_version, version)
                action = list(sequence.tokens)
                logprobs = [float(x) for x in (sequence.logprobs or [])]
                try:
                    result = _take_step(envs[index], action)
                except Exception as error:
                    trajectory.error = f"step: {_short(error)}"
                    observations[index] = None
                    continue
                trajectory.transitions.append(Transition(
                    observation=list(key), action=action, action_logprobs=logprobs,
                    reward=result.reward, episode_done=result.episode_done,
                    metrics=dict(result.metrics)))
                observations[index] = None if result.episode_done \
                    else list(result.next_observation)
        turn += 1

    ok = [t for t in trajectories_G if not t.failed]
    if ok:
        try:
            extra = builder.compute_group_rewards(ok)
            for trajectory, value in zip(ok, extra, strict=True):
                trajectory.group_reward = check_reward(value, "compute_group_rewards")
        except Exception as error:
            for trajectory in ok:
                trajectory.error = f"compute_group_rewards: {_short(error)}"
    completions_G = [" ⏎ ".join(settings.decode(t.action) for t in trajectory.transitions)
                     for trajectory in trajectories_G]
    return TrajectoryGroup(trajectories_G, prompt=prompt, completions_G=completions_G,
                           tags=list(builder.logging_tags()))


async def rollout_batch(builders: Sequence[EnvGroupBuilder], group_size: int, policy: Any,
                        settings: RolloutSettings, *, step: int) -> RolloutBatch:
    """All groups of one step, sampled concurrently."""
    started = time.monotonic()
    groups = await asyncio.gather(*(
        rollout_group(builder, group_size, policy, settings, step=step, group=index)
        for index, builder in enumerate(builders)))
    versions = [t.policy_version for g in groups for t in g.trajectories_G if t.transitions]
    floor = getattr(policy, "min_policy_version", None) or 0
    return RolloutBatch(step=step, groups=list(groups), sample_s=time.monotonic() - started,
                        policy_version=min(versions) if versions else floor)
