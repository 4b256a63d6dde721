"""The judge reward against the real sampler: P(yes) from logprobs, batched, cached."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from loops_runner.errors import ConfigError
from loops_runner.rl.judge import (
    DEFAULT_RUBRIC,
    Judge,
    JudgeSettings,
    check_rubric,
    verdict_probability,
)
from loops_runner.rl.rollouts import RolloutBatch
from loops_runner.rl.teacher import TeacherSource
from loops_runner.rl.types import Trajectory, TrajectoryGroup, Transition
from loops_runner.wire import ModelInput


def settings(rubric: str = DEFAULT_RUBRIC, weight: float = 1.0) -> JudgeSettings:
    return JudgeSettings(TeacherSource("base_model", "tiny", "tiny"), rubric, "yes", "no",
                         weight)


def test_a_rubric_must_show_the_reply_and_name_only_known_fields() -> None:
    assert check_rubric("Q: {prompt} A: {completion} ok? {{yes}}")
    with pytest.raises(ConfigError, match=r"recipe.judge_rubric: unknown field\(s\) \['answer'\]"):
        check_rubric("{prompt} {answer}")
    with pytest.raises(ConfigError, match=r"put \{completion\} in it"):
        check_rubric("Is {prompt} good?")
    with pytest.raises(ConfigError, match="not a valid template"):
        check_rubric("{completion} {")


def test_verdict_probability_is_a_stable_two_way_softmax() -> None:
    assert verdict_probability(-1.0, -1.0) == 0.5
    assert verdict_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert verdict_probability(0.0, -5000.0) == 1.0
    assert verdict_probability(-5000.0, 0.0) == pytest.approx(0.0, abs=1e-300)  # no overflow


class CountingSampler:
    """The real sampling client, counting the ``compute_logprobs`` requests it forwards."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.requests = 0

    def get_tokenizer(self) -> Any:
        return self.client.get_tokenizer()

    async def compute_logprobs_async(self, prompt: ModelInput) -> list[float | None]:
        self.requests += 1
        return await self.client.compute_logprobs_async(prompt)


def test_scores_are_p_yes_from_logprobs_batched_and_cached(policy) -> None:
    sampler = CountingSampler(policy)
    judge = Judge(sampler, settings())
    pairs = [("What is 2 + 2?", "4"), ("What is 2 + 2?", "banana"), ("What is 2 + 2?", "4")]
    scored = asyncio.run(judge.score(pairs))
    assert sampler.requests == 4  # two distinct pairs x two verdicts; the repeat is free
    assert [cached for _, cached in scored] == [False, False, False]
    assert scored[0][0] == scored[2][0] and 0.0 < scored[0][0] < 1.0
    # The same number by hand: the verdict's logprob right after the rendered rubric.
    context = judge.rubric_tokens("What is 2 + 2?", "4")
    yes, no = (policy.compute_logprobs(ModelInput.from_ints(context + tokens))
               for tokens in judge.verdict_tokens)
    expected = verdict_probability(sum(yes[len(context):]), sum(no[len(context):]))
    assert scored[0][0] == pytest.approx(expected, abs=1e-6)
    again = asyncio.run(judge.score([("What is 2 + 2?", "banana")]))
    assert again == [(scored[1][0], True)] and sampler.requests == 4


def _batch(completions: list[str], failed: int | None = None) -> RolloutBatch:
    trajectories = [Trajectory([Transition([1], [2], [-0.5], reward=0.25, episode_done=True)])
                    for _ in completions]
    if failed is not None:
        trajectories[failed].error = "step: boom"
    return RolloutBatch(0, [TrajectoryGroup(trajectories, prompt="Name a colour.",
                                            completions_G=completions)], 0.0, 0)


def test_the_judge_adds_its_weighted_score_to_each_finished_episode(policy) -> None:
    judge = Judge(policy, settings(weight=2.0))
    batch = _batch(["red", "the sky", "red"], failed=1)
    asyncio.run(judge.reward_batch(batch))
    ok = [batch.groups[0].trajectories_G[i] for i in (0, 2)]
    score = ok[0].transitions[-1].metrics["judge_score"]
    assert 0.0 < score < 1.0
    assert [t.total_reward for t in ok] == [pytest.approx(0.25 + 2.0 * score)] * 2
    assert math.isnan(batch.groups[0].rewards_G()[1])  # the failed episode stays failed
    assert "judge_score" not in batch.groups[0].trajectories_G[1].transitions[-1].metrics


def test_a_judge_that_cannot_answer_fails_its_episodes_with_the_reason(
        policy, tiny_model_dir) -> None:
    from loops_runner.sdk import SamplingClient

    judge = Judge(policy, settings())
    # Its sampler went away (nothing listens on the discard port).
    judge.sampler = SamplingClient(base_model=str(tiny_model_dir),
                                   endpoint="http://127.0.0.1:9", timeout=5, ready_timeout=1)
    batch = _batch(["blue", "green"])
    asyncio.run(judge.reward_batch(batch))
    errors = [t.error for t in batch.groups[0].trajectories_G]
    assert all(e is not None and e.startswith("judge: ") for e in errors), errors


def test_a_rubric_too_long_for_the_judge_fails_only_its_episode(policy) -> None:
    judge = Judge(policy, settings())
    batch = _batch(["fine", "word " * 3000])  # the second rubric exceeds the context
    asyncio.run(judge.reward_batch(batch))
    first, second = batch.groups[0].trajectories_G
    assert first.error is None and 0 < first.transitions[-1].metrics["judge_score"] < 1
    assert second.error is not None and second.error.startswith("judge: "), second.error
    assert asyncio.run(judge.score([("Name a colour.", "fine")]))[0][1] is True  # cached


def test_a_judge_path_that_does_not_resolve_is_refused_naming_recipe_judge(
        tmp_path) -> None:
    from loops_runner.recipes.rl import Config, judge_settings

    with pytest.raises(ConfigError, match=r"recipe\.judge: \./no-such-run does not exist"):
        judge_settings(Config(judge="./no-such-run", prompts="p.jsonl"))
    (tmp_path / "run.json").write_text('{"config_hash": "h", "seed": 0, "run_name": "r", '
                                       '"recipe": "sft", "backend": "local", '
                                       '"base_model": "tiny"}')
    with pytest.raises(ConfigError, match=r"recipe\.judge: the run in .* has no checkpoint"):
        judge_settings(Config(judge=str(tmp_path), prompts="p.jsonl"))
    resolved = judge_settings(Config(judge="tiny", prompts="p.jsonl", judge_weight=0.5))
    assert resolved is not None and resolved.source.kind == "base_model"
    assert resolved.weight == 0.5 and resolved.positive == "yes"
