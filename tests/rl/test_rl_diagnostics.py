"""RL diagnostics: the estimators on hand-made arrays, and failing runs built on purpose
against the real sampler and trainer (a sampler serving other weights than the trainer's
must show in the KL and the effective sample size)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from loops_runner.rl.datums import TokenSequence, trajectory_sequences
from loops_runner.rl.diagnostics import (
    policy_diagnostics,
    rollout_diagnostics,
    sampled_tokens,
    step_diagnostics,
)
from loops_runner.rl.message_env import MessageEnvGroupBuilder, ProblemEnv
from loops_runner.rl.rollouts import RolloutBatch, RolloutSettings, rollout_batch
from loops_runner.rl.types import Trajectory, TrajectoryGroup, Transition
from loops_runner.sdk import SamplingClient, ServiceClient

# -- the estimators on arrays whose answers are known ----------------------------------


def _sequence(sampler_T: list[float], advantage: float = 1.0) -> TokenSequence:
    """Two prompt tokens, then one sampled token per sampler logprob."""
    sequence = TokenSequence([], [], [], [])
    sequence.append([1, 2], [], 0.0, trained=False)
    sequence.append(list(range(10, 10 + len(sampler_T))), sampler_T, advantage, trained=True)
    return sequence


def _trainer(sequence: TokenSequence, trained_T: list[float]) -> list[float]:
    """Trainer logprobs per target: junk on the prompt target, ``trained_T`` after."""
    return [-9.0, *trained_T]  # target 0 is prompt token 2 (weight 0): left out


def test_identical_logprobs_give_zero_kl_unit_ratio_and_full_ess() -> None:
    sequence = _sequence([-1.0, -2.0, -0.5])
    tokens = sampled_tokens([sequence], [_trainer(sequence, [-1.0, -2.0, -0.5])])
    assert tokens.sampler.tolist() == [-1.0, -2.0, -0.5]
    metrics = policy_diagnostics(tokens, "importance_sampling")
    for key in ("kl/sample_train_k1", "kl/sample_train_k2", "kl/sample_train_k3"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-12)
    assert metrics["diag/ratio_mean"] == metrics["diag/ratio_max"] == pytest.approx(1.0)
    assert metrics["diag/ess_frac"] == pytest.approx(1.0)
    assert metrics["diag/entropy"] == pytest.approx(3.5 / 3)
    assert "diag/clip_frac" not in metrics  # importance_sampling clips nothing


def test_estimators_match_their_definitions() -> None:
    sampler_T, trainer_T = [-1.0, -1.0, -1.0, -1.0], [-1.0, -0.5, -2.0, -1.0 + math.log(3)]
    sequence = _sequence(sampler_T)
    metrics = policy_diagnostics(sampled_tokens([sequence], [_trainer(sequence, trainer_T)]),
                                 "importance_sampling")
    log_r = np.array(trainer_T) - np.array(sampler_T)
    r = np.exp(log_r)
    assert metrics["kl/sample_train_k1"] == pytest.approx(float(-log_r.mean()))
    assert metrics["kl/sample_train_k2"] == pytest.approx(float((log_r ** 2).mean() / 2))
    assert metrics["kl/sample_train_k3"] == pytest.approx(float((r - 1 - log_r).mean()))
    assert metrics["diag/ratio_max"] == pytest.approx(3.0)
    assert metrics["diag/ess_frac"] == pytest.approx(float(r.sum() ** 2 / (4 * (r ** 2).sum())))
    assert metrics["diag/logprob_diff_max"] == pytest.approx(math.log(3))


def test_one_token_carrying_all_the_weight_collapses_the_ess() -> None:
    sequence = _sequence([-5.0] * 100)
    trainer_T = [-5.0] * 99 + [-5.0 + 20.0]  # one ratio of e^20, the rest 1
    metrics = policy_diagnostics(sampled_tokens([sequence], [_trainer(sequence, trainer_T)]),
                                 "importance_sampling")
    assert metrics["diag/ess_frac"] < 0.011  # ~1/n
    assert metrics["kl/sample_train_k3"] > 1e6


@pytest.mark.parametrize(("loss_fn", "advantage", "expected"),
                         [("ppo", 1.0, 0.25), ("ppo", -1.0, 0.25), ("cispo", 1.0, 0.5),
                          ("cispo", -1.0, 0.5)])
def test_clip_fraction_follows_each_loss_definition(loss_fn: str, advantage: float,
                                                    expected: float) -> None:
    # Ratios 0.5, 0.9, 1.1, 1.5: cispo clips both ends; ppo clips only the end that
    # would raise the objective (r > 1.2 with A > 0, r < 0.8 with A < 0).
    ratios = [0.5, 0.9, 1.1, 1.5]
    sequence = _sequence([-1.0] * 4, advantage)
    tokens = sampled_tokens([sequence], [_trainer(sequence, [-1.0 + math.log(r)
                                                             for r in ratios])])
    assert policy_diagnostics(tokens, loss_fn)["diag/clip_frac"] == pytest.approx(expected)
    wider = policy_diagnostics(tokens, loss_fn, {"clip_low_threshold": 0.4,
                                                 "clip_high_threshold": 1.6})
    assert wider["diag/clip_frac"] == 0.0


def test_a_trainer_answer_of_the_wrong_length_is_refused() -> None:
    sequence = _sequence([-1.0, -1.0])
    with pytest.raises(ValueError, match="sequence 0: the trainer gave 2 logprobs for 3"):
        sampled_tokens([sequence], [[-1.0, -1.0]])


def test_divergent_tokens_are_the_largest_gaps_first_with_their_context() -> None:
    sequence = _sequence([-1.0, -1.0, -1.0, -1.0])
    metrics, rows = step_diagnostics(
        [sequence], [_trainer(sequence, [-1.0, -3.0, -1.5, -0.2])], "ppo", None,
        lambda tokens: " ".join(map(str, tokens)), table_rows=2)
    assert [row["token"] for row in rows] == ["11", "13"]
    assert rows[0]["diff"] == pytest.approx(-2.0) and rows[1]["diff"] == pytest.approx(0.8)
    assert rows[0]["context"] == "1 2 10" and rows[0]["position"] == 3
    assert metrics["time/diagnostics_s"] >= 0 and "diag/clip_frac" in metrics


def _episode(reward: float, version: int) -> Trajectory:
    return Trajectory([Transition([1], [2], [-0.1], reward=reward, episode_done=True)],
                      policy_version=version)


def test_group_reward_std_and_the_staleness_distribution() -> None:
    groups = [TrajectoryGroup([_episode(0.0, 5), _episode(1.0, 4)]),
              TrajectoryGroup([_episode(1.0, 4), _episode(1.0, 3)]),
              TrajectoryGroup([_episode(0.0, 5), Trajectory(error="boom")])]
    metrics = rollout_diagnostics(RolloutBatch(0, groups, 0.0, 3), current_version=5,
                                  max_lag=2)
    assert metrics["diag/group_reward_std"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["rollout/staleness_max"] == 2.0
    assert metrics["rollout/stale_frac"] == pytest.approx(3 / 5)
    assert metrics["rollout/stale_frac/lag1"] == pytest.approx(2 / 5)
    assert metrics["rollout/stale_frac/lag2"] == pytest.approx(1 / 5)


# -- failing runs on purpose, on the real stack -------------------------------------------


def _sample_sequences(policy: Any, tokenizer: Any) -> list[TokenSequence]:
    builders = [MessageEnvGroupBuilder(
        lambda prompt=prompt: ProblemEnv([{"role": "user", "content": prompt}],
                                         lambda reply: 0.0), tokenizer, prompt=prompt)
        for prompt in ("What is 3 + 4?", "Name a capital city.", "Reverse the word cat.")]
    settings = RolloutSettings(max_tokens=12, seed=5, decode=tokenizer.decode)
    batch = asyncio.run(rollout_batch(builders, 4, policy, settings, step=0))
    sequences_D = [s for g in batch.groups for t in g.trajectories_G
                   for s in trajectory_sequences(t, 1.0)]
    assert len(sequences_D) == 12
    return sequences_D


def _diagnostics(service: ServiceClient, tiny_model_dir: Any, sequences_D: list[TokenSequence],
                 tokenizer: Any) -> tuple[dict[str, float], list[dict[str, Any]]]:
    # A fresh adapter (LoRA B = 0) is the base model: the trainer of a run that has not
    # trained yet.
    with service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=0) as training:
        output = training.forward([s.to_datum() for s in sequences_D], "ppo").result()
    trainer_D = [o["logprobs"].tolist() for o in output.loss_fn_outputs]
    return step_diagnostics(sequences_D, trainer_D, "ppo", None, tokenizer.decode, 5)


def test_a_corrupted_sampler_adapter_raises_the_kl_and_lowers_the_ess(
        service, policy, sampler_server, loops_home, tiny_model_dir, run_id) -> None:
    from tests.sampler import helpers

    tokenizer = policy.get_tokenizer()
    healthy, _ = _diagnostics(service, tiny_model_dir,
                              _sample_sequences(policy, tokenizer), tokenizer)
    assert healthy["kl/sample_train_k3"] < 1e-4
    assert healthy["diag/ess_frac"] > 0.999 and healthy["diag/clip_frac"] == 0.0

    # The sampler serves a run whose published adapter is not the trainer's: what a
    # sampler that loaded the wrong (or a half-written) adapter would do.
    helpers.make_adapter(tiny_model_dir, seed=7, scale=0.08).save(
        loops_home, run_id, "corrupted", step=1)
    assert helpers.publish(loops_home, run_id, 1, "corrupted",
                           sampler_url=sampler_server.url).status_code == 200
    corrupted_policy = SamplingClient(base_model=str(tiny_model_dir),
                                      endpoint=sampler_server.url, run_id=run_id,
                                      min_policy_version=1)
    broken, rows = _diagnostics(service, tiny_model_dir,
                                _sample_sequences(corrupted_policy, tokenizer), tokenizer)
    assert broken["kl/sample_train_k3"] > 100 * max(healthy["kl/sample_train_k3"], 1e-5)
    assert broken["kl/sample_train_k3"] > 0.01
    assert broken["diag/ess_frac"] < healthy["diag/ess_frac"] - 0.05
    assert broken["diag/clip_frac"] > 0.0
    assert broken["diag/logprob_diff_max"] > 10 * healthy["diag/logprob_diff_max"]
    # The table leads with the worst token, and its numbers are the trainer's and sampler's.
    assert len(rows) == 5 and abs(rows[0]["diff"]) == pytest.approx(
        broken["diag/logprob_diff_max"])
    assert rows[0]["diff"] == pytest.approx(rows[0]["trainer_logprob"]
                                            - rows[0]["sampler_logprob"])
