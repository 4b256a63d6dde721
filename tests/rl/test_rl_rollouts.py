"""Rollouts against the real sampler and trainer: group sampling, agreement, bad input."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from loops_runner.rl.datums import mean_abs_logprob_diff, sampled_logprobs_D, trajectory_sequences
from loops_runner.rl.message_env import MessageEnvGroupBuilder, ProblemEnv
from loops_runner.rl.reference_kl import apply_kl_penalty, reference_logprobs_D
from loops_runner.rl.rollouts import RolloutSettings, rollout_batch, rollout_group
from loops_runner.rl.types import Env, EnvGroupBuilder, StepResult


@pytest.fixture(scope="module")
def tokenizer(policy: Any) -> Any:
    return policy.get_tokenizer()


class CountingPolicy:
    """The real sampling client, counting the ``sample`` calls it forwards."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[int] = []
        self.min_policy_version = None

    async def sample_async(self, prompt: Any, num_samples: int, params: Any) -> Any:
        self.calls.append(num_samples)
        return await self.client.sample_async(prompt, num_samples, params)


def settings(tokenizer: Any, **overrides: Any) -> RolloutSettings:
    values: dict[str, Any] = {"max_tokens": 6, "seed": 3, "decode": tokenizer.decode}
    return RolloutSettings(**{**values, **overrides})


def problem(tokenizer: Any, check: Any, prompt: str = "What is 2 + 2?") -> EnvGroupBuilder:
    messages = [{"role": "user", "content": prompt}]
    return MessageEnvGroupBuilder(lambda: ProblemEnv(messages, check), tokenizer, prompt=prompt)


def test_a_group_is_one_sample_call_with_n_and_groups_run_together(policy, tokenizer) -> None:
    counting = CountingPolicy(policy)
    builders = [problem(tokenizer, lambda reply: float(len(reply) % 3), f"Say {i}")
                for i in range(3)]
    batch = asyncio.run(rollout_batch(builders, 4, counting, settings(tokenizer), step=0))
    assert counting.calls == [4, 4, 4]
    assert [len(g.trajectories_G) for g in batch.groups] == [4, 4, 4]
    for group in batch.groups:
        for trajectory in group.trajectories_G:
            [turn] = trajectory.transitions
            assert 1 <= len(turn.action) <= 6 and len(turn.action_logprobs) == len(turn.action)
            assert trajectory.total_reward in (0.0, 1.0, 2.0) and not trajectory.failed
    assert batch.policy_version == 0


def test_sampler_and_trainer_agree_on_the_same_weights(service, policy, tokenizer,
                                                       tiny_model_dir) -> None:
    builder = problem(tokenizer, lambda reply: 0.0)
    group = asyncio.run(rollout_group(builder, 4, policy, settings(tokenizer, max_tokens=12)))
    sequences_D = [s for t in group.trajectories_G for s in trajectory_sequences(t, 1.0)]
    assert sequences_D
    # A fresh adapter is the base model (LoRA B = 0), which is what the sampler serves.
    with service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0) as training:
        output = training.forward([s.to_datum() for s in sequences_D],
                                  "importance_sampling").result()
    trainer_D = [o["logprobs"].tolist() for o in output.loss_fn_outputs]
    gap = mean_abs_logprob_diff(sampled_logprobs_D(sequences_D), trainer_D)
    assert gap <= 1e-3, gap


class RaisingEnv(Env):
    def __init__(self, tokens: list[int], where: str) -> None:
        self.tokens, self.where = tokens, where

    def initial_observation(self) -> list[int]:
        if self.where == "start":
            raise RuntimeError("no prompt today")
        return self.tokens

    def step(self, action: list[int]) -> StepResult:
        if self.where == "step":
            raise KeyError("broken env")
        return StepResult(reward=1.0, episode_done=True)


class MixedBuilder(EnvGroupBuilder):
    def __init__(self, tokens: list[int]) -> None:
        self.tokens = tokens

    def make_envs(self, group_size: int) -> list[Env]:
        return [RaisingEnv(self.tokens, where) for where in ("start", "step", "ok", "ok")]


@pytest.mark.parametrize("value", [math.nan, None, "high"])
def test_a_bad_reward_fails_its_episode_with_a_clear_message(policy, tokenizer,
                                                             value: object) -> None:
    rewards = iter([value, 1.0, 0.0])
    builder = problem(tokenizer, lambda reply: next(rewards))
    group = asyncio.run(rollout_group(builder, 3, policy, settings(tokenizer)))
    errors = [t.error for t in group.trajectories_G]
    assert errors[1:] == [None, None]
    assert errors[0] is not None and "step:" in errors[0] and repr(value) in errors[0]
    assert "finite number" in errors[0]
    assert math.isnan(group.rewards_G()[0]) and group.rewards_G()[1:] == [1.0, 0.0]


def test_env_errors_and_overlong_prompts_fail_only_their_episodes(policy, tokenizer) -> None:
    group = asyncio.run(rollout_group(MixedBuilder([5, 6, 7]), 4, policy, settings(tokenizer)))
    errors = [t.error for t in group.trajectories_G]
    assert errors[0] == "initial_observation: RuntimeError: no prompt today"
    assert errors[1] == "step: KeyError: 'broken env'"
    assert errors[2:] == [None, None]
    long_prompt = list(range(10, 10 + 50))
    group = asyncio.run(rollout_group(MixedBuilder(long_prompt), 4, policy,
                                      settings(tokenizer, max_context=40)))
    assert group.trajectories_G[2].error == (
        "sample: ValueError: prompt of 50 tokens does not fit the model's context of 40 tokens")


def test_reference_logprobs_score_every_token_like_the_sampler(policy, tokenizer) -> None:
    builder = problem(tokenizer, lambda reply: 0.0)
    group = asyncio.run(rollout_group(builder, 2, policy, settings(tokenizer, max_tokens=8)))
    sequences_D = [s for t in group.trajectories_G for s in trajectory_sequences(t, 1.0)]
    # The policy here is the base model itself, so the KL estimate is ~0.
    reference_D = asyncio.run(reference_logprobs_D(policy, sequences_D))
    for sequence, reference_T in zip(sequences_D, reference_D, strict=True):
        assert len(reference_T) == len(sequence.tokens) and reference_T[0] is None
    kl = apply_kl_penalty(sequences_D, reference_D, coef=1.0)
    assert abs(kl) <= 1e-3
