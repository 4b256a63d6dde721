"""The RL layer's pure parts: advantages, datums, rewards, tool calls, envs, datasets."""

from __future__ import annotations

import math

import pytest

from loops_runner.data.prompts import prompt_messages
from loops_runner.data.sources import DataError
from loops_runner.rl.advantages import group_advantages, is_constant
from loops_runner.rl.datasets import BuilderListDataset
from loops_runner.rl.datums import (
    mean_abs_logprob_diff,
    sampled_logprobs_D,
    trajectory_sequences,
)
from loops_runner.rl.envs.calculator import CalculatorEnv, calculator
from loops_runner.rl.envs.guess_number import GuessNumberEnv
from loops_runner.rl.message_env import MessageEnvGroupBuilder, ProblemEnv
from loops_runner.rl.reference_kl import apply_kl_penalty
from loops_runner.rl.tools import ToolCall, parse_tool_call
from loops_runner.rl.types import Trajectory, Transition, check_reward


def test_advantages_centre_on_the_group_mean_and_skip_failed_episodes() -> None:
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]
    assert group_advantages([2.0, math.nan, 0.0]) == [1.0, 0.0, -1.0]
    scaled = group_advantages([1.0, 0.0, 0.0, 1.0], normalize_std=True)
    assert scaled[0] == pytest.approx(1.0, rel=1e-5) and scaled[1] == pytest.approx(-1.0, rel=1e-5)
    assert group_advantages([math.nan, math.nan]) == [0.0, 0.0]


def test_constant_groups_carry_no_signal() -> None:
    assert is_constant([1.0, 1.0, 1.0])
    assert is_constant([0.0, math.nan, 0.0])
    assert is_constant([1.0])
    assert not is_constant([1.0, 0.0])


@pytest.mark.parametrize("value", [math.nan, math.inf, None, "1.0", [1.0]])
def test_bad_rewards_are_named(value: object) -> None:
    with pytest.raises(ValueError, match=r"my_reward returned .*finite number"):
        check_reward(value, "my_reward")


def test_good_rewards_pass_as_floats() -> None:
    assert check_reward(1, "r") == 1.0 and check_reward(True, "r") == 1.0
    assert isinstance(check_reward(0, "r"), float)


def test_single_turn_datum_shifts_inputs_by_one_and_trains_only_sampled_tokens() -> None:
    trajectory = Trajectory([Transition([10, 11, 12], [20, 21], [-0.5, -0.25], reward=1.0,
                                        episode_done=True)])
    [sequence] = trajectory_sequences(trajectory, 0.75)
    datum = sequence.to_datum()
    assert datum.model_input.to_ints() == [10, 11, 12, 20]
    inputs = datum.loss_fn_inputs
    assert inputs["target_tokens"].data == [11, 12, 20, 21]
    # The target 20 is predicted at input position 2 (token 12): its logprob and
    # advantage sit there, never on prompt targets.
    assert inputs["logprobs"].data == [0.0, 0.0, -0.5, -0.25]
    assert inputs["advantages"].data == [0.0, 0.0, 0.75, 0.75]
    assert inputs["weights"].data == [0.0, 0.0, 1.0, 1.0]


def test_multi_turn_episode_merges_when_observations_extend_each_other() -> None:
    first = Transition([1, 2], [3, 4], [-1.0, -2.0])
    second = Transition([1, 2, 3, 4, 5, 6], [7], [-3.0], reward=1.0, episode_done=True)
    [merged] = trajectory_sequences(Trajectory([first, second]), 1.0)
    assert merged.tokens == [1, 2, 3, 4, 5, 6, 7]
    assert merged.weights == [0, 0, 1, 1, 0, 0, 1]
    assert merged.logprobs == [0, 0, -1.0, -2.0, 0, 0, -3.0]
    # A re-rendered history that differs from the sampled tokens starts a new datum.
    rerendered = Transition([1, 2, 9, 5, 6], [7], [-3.0], reward=1.0, episode_done=True)
    split = trajectory_sequences(Trajectory([first, rerendered]), [0.5, -0.5])
    assert [s.tokens for s in split] == [[1, 2, 3, 4], [1, 2, 9, 5, 6, 7]]
    assert split[1].advantages[-1] == -0.5


def test_turn_with_mismatched_logprobs_is_refused() -> None:
    with pytest.raises(ValueError, match="2 sampled tokens but 1 logprobs"):
        trajectory_sequences(Trajectory([Transition([1], [2, 3], [-1.0])]), 1.0)


def test_sample_train_gap_counts_only_sampled_tokens() -> None:
    trajectory = Trajectory([Transition([10, 11], [20, 21], [-0.5, -0.25])])
    sequences = trajectory_sequences(trajectory, 1.0)
    sampler = sampled_logprobs_D(sequences)
    assert sampler == [[None, -0.5, -0.25]]
    assert mean_abs_logprob_diff(sampler, [[-9.0, -0.5, -0.5]]) == pytest.approx(0.125)


def test_kl_penalty_lowers_advantages_by_the_per_token_kl() -> None:
    trajectory = Trajectory([Transition([10, 11], [20, 21], [-0.5, -1.0])])
    sequences = trajectory_sequences(trajectory, 1.0)
    kl = apply_kl_penalty(sequences, [[None, -2.0, -0.5, -1.5]], coef=0.1)
    assert kl == pytest.approx(((-0.5 + 0.5) + (-1.0 + 1.5)) / 2)
    assert sequences[0].advantages == pytest.approx([0, 0, 1.0, 1.0 - 0.1 * 0.5])


def test_tool_calls_parse_and_malformed_ones_say_why() -> None:
    call = parse_tool_call('sure <tool_call>{"name": "calculator", "arguments": '
                           '{"expression": "2*3"}}</tool_call>')
    assert call == ToolCall("calculator", {"expression": "2*3"})
    assert parse_tool_call("42") is None
    assert "not valid JSON" in str(parse_tool_call("<tool_call>{oops</tool_call>"))
    assert "'name'" in str(parse_tool_call("<tool_call>[1]</tool_call>"))


def test_calculator_env_runs_the_tool_and_scores_the_final_answer() -> None:
    assert calculator("12 * (3 + 4)") == "84"
    with pytest.raises(ValueError, match="only numbers"):
        calculator("__import__('os')")
    env = CalculatorEnv("What is 6 * 7 + 1?", 43, max_tool_calls=2)
    assert env.initial_messages()[0]["role"] == "system"
    step = env.step_reply('<tool_call>{"name": "calculator", "arguments": '
                          '{"expression": "6*7+1"}}</tool_call>')
    assert not step.episode_done and step.new_messages == [{"role": "tool", "content": "43"}]
    bad = env.step_reply('<tool_call>{"name": "shell", "arguments": {}}</tool_call>')
    assert "unknown tool 'shell'" in bad.new_messages[0]["content"]
    final = env.step_reply("43")
    assert final.episode_done and final.reward == 1.0


def test_guess_number_gives_feedback_until_solved_or_out_of_guesses() -> None:
    env = GuessNumberEnv(secret=6, high=10, max_guesses=3)
    first = env.step_reply("3")
    assert not first.episode_done and first.new_messages[0]["content"] == "Higher."
    second = env.step_reply("I say 6")
    assert second.episode_done and second.reward == pytest.approx(0.9)
    out = GuessNumberEnv(secret=6, high=10, max_guesses=1).step_reply("nope")
    assert out.episode_done and out.reward == 0.0 and out.metrics["valid_guess"] == 0.0


def test_builder_dataset_batches_are_a_pure_function_of_the_index() -> None:
    builders = [MessageEnvGroupBuilder(lambda: ProblemEnv([], float), None, prompt=str(i))
                for i in range(10)]
    one, two = BuilderListDataset(builders, 3, seed=1), BuilderListDataset(builders, 3, seed=1)
    assert len(one) == 3
    prompts = [[b.prompt_text() for b in one.get_batch(i)] for i in range(3)]
    assert prompts == [[b.prompt_text() for b in two.get_batch(i)] for i in range(3)]
    assert len({p for batch in prompts for p in batch}) == 9
    assert [b.prompt_text() for b in one.get_batch(3)] == prompts[0]


def test_prompt_rows_accept_messages_or_prompt_and_name_bad_rows() -> None:
    assert prompt_messages({"prompt": "hi", "x": 1}, "r1") == [{"role": "user", "content": "hi"}]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert prompt_messages({"messages": messages}, "r2") == messages
    with pytest.raises(DataError, match=r"r3: needs a 'prompt' \(text or messages\) or a "):
        prompt_messages({"text": "hi"}, "r3")
    with pytest.raises(DataError, match="r4: field 'messages' ends with an assistant turn"):
        prompt_messages({"messages": [*messages, {"role": "assistant", "content": "a"}]}, "r4")


def test_too_many_failed_episodes_stop_the_run_with_the_first_errors() -> None:
    from loops_runner.recipes.rl import Config, RolloutErrorRate, check_error_rate
    from loops_runner.rl.rollouts import RolloutBatch
    from loops_runner.rl.types import TrajectoryGroup

    def batch(failed: int) -> RolloutBatch:
        trajectories = [Trajectory(error="step: KeyError: 'x'") for _ in range(failed)]
        trajectories += [Trajectory() for _ in range(4 - failed)]
        return RolloutBatch(step=0, groups=[TrajectoryGroup(trajectories)], sample_s=0.0,
                            policy_version=0)

    cfg = Config(max_rollout_error_frac=0.5)
    check_error_rate(batch(2), cfg, step=1)  # half failed: at the limit, not past it
    with pytest.raises(RolloutErrorRate, match=r"step 3: 3 of 4 episodes failed, more than "
                       r"recipe.max_rollout_error_frac=0.5. First errors: step: KeyError"):
        check_error_rate(batch(3), cfg, step=3)


def test_rl_config_refuses_a_reward_without_prompts_and_an_env_with_a_reward() -> None:
    from pydantic import ValidationError

    from loops_runner.recipes.rl import Config

    with pytest.raises(ValidationError, match=r"recipe\.reward scores replies to "
                                              r"recipe\.prompts: set recipe\.prompts too"):
        Config(reward="x:score")
    with pytest.raises(ValidationError, match=r"set either recipe\.env"):
        Config(reward="x:score", prompts="p.jsonl", env="y:make_dataset")
    with pytest.raises(ValidationError, match=r"set either recipe\.env"):
        Config(judge="tiny", prompts="p.jsonl", env="y:make_dataset")
    with pytest.raises(ValidationError, match=r"recipe\.prompts need a reward: "
                                              r"recipe\.reward=module:score, recipe\.judge"):
        Config(prompts="p.jsonl")
    with pytest.raises(ValidationError, match=r"recipe\.judge_rubric: unknown field"):
        Config(judge="tiny", prompts="p.jsonl", judge_rubric="{question} {completion}")
    # A judge alone, or on top of a reward or an env, is fine.
    Config(judge="tiny", prompts="p.jsonl")
    Config(judge="tiny", reward="x:score", prompts="p.jsonl")
    Config(judge="tiny", env="y:make_dataset")
