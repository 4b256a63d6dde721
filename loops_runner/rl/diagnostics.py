"""Why an RL run learns or not: sampler/trainer agreement, importance weights, entropy,
clipping, reward spread and staleness, from arrays the recipe already holds.

Every number here is a pure function of one step's sampled sequences (tokens, the
sampler's logprobs, advantages, weights), the trainer's logprobs of the same tokens
(``forward_backward``'s ``loss_fn_outputs``) and the step's rollout groups: no extra
request, a few numpy passes over the step's tokens. docs/rl.md says what each one
tells about a failing run.

With ``q`` the sampler's logprob of a sampled token and ``p`` the trainer's, the
importance ratio is ``r = exp(p - q)`` (what the policy losses weigh each token by).
Tokens were drawn from the sampler, so over them:

* ``kl/sample_train_k1`` = mean(q - p), an unbiased estimate of KL(sampler || trainer)
  (it can come out negative on a few tokens);
* ``kl/sample_train_k2`` = mean((p - q)^2 / 2), low variance, biased;
* ``kl/sample_train_k3`` = mean(r - 1 - (p - q)), unbiased and never negative;
* ``diag/ess_frac`` = (sum r)^2 / (n * sum r^2): 1 when every ratio is equal, near
  1/n when one token carries all the weight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loops_runner.rl.datums import TokenSequence
from loops_runner.rl.rollouts import RolloutBatch

# A log-ratio beyond this is clamped before exp: exp(50) ~ 5e21 already says "broken",
# and an overflow to inf would turn the ESS and ratio mean into NaN.
MAX_LOG_RATIO = 50.0
# Losses whose ratio is clipped, with the trainer's default thresholds
# (servers/trainer/losses.py; loss_fn_config overrides them).
CLIPPED_LOSSES = {"ppo": (0.8, 1.2), "cispo": (0.8, 1.2)}
CONTEXT_TOKENS = 8  # tokens shown before each divergent token


@dataclass
class SampledTokens:
    """The trained tokens of one step, flattened: where each came from and its numbers."""

    sampler: np.ndarray  # q, the sampler's logprob
    trainer: np.ndarray  # p, the trainer's logprob
    advantage: np.ndarray
    datum: np.ndarray  # index into the step's sequences
    position: np.ndarray  # index into that sequence's tokens

    @property
    def log_ratio(self) -> np.ndarray:
        return self.trainer - self.sampler


def sampled_tokens(sequences_D: Sequence[TokenSequence],
                   trainer_D: Sequence[Sequence[float]]) -> SampledTokens:
    """Pair each trained token's sampler and trainer logprob (target ``t`` is token ``t+1``).

    Tokens with weight 0 (prompts, observations) and tokens the trainer gave no
    finite logprob are left out.
    """
    parts: list[tuple[np.ndarray, ...]] = []
    for index, (sequence, trainer_T) in enumerate(zip(sequences_D, trainer_D, strict=True)):
        trainer = np.asarray(trainer_T, dtype=np.float64)
        targets = len(sequence.tokens) - 1
        if trainer.shape != (targets,):
            raise ValueError(f"sequence {index}: the trainer gave {trainer.shape[0]} logprobs "
                             f"for {targets} target tokens")
        keep = (np.asarray(sequence.weights[1:]) != 0) & np.isfinite(trainer)
        positions = np.flatnonzero(keep)
        parts.append((np.asarray(sequence.logprobs[1:], dtype=np.float64)[positions],
                      trainer[positions],
                      np.asarray(sequence.advantages[1:], dtype=np.float64)[positions],
                      np.full(positions.shape, index), positions + 1))
    if not parts:
        empty = np.zeros(0)
        return SampledTokens(empty, empty, empty, empty.astype(int), empty.astype(int))
    columns = [np.concatenate(column) for column in zip(*parts, strict=True)]
    return SampledTokens(*columns)


def clip_thresholds(loss_fn: str, loss_fn_config: Mapping[str, float] | None
                    ) -> tuple[float, float] | None:
    if loss_fn not in CLIPPED_LOSSES:
        return None
    low, high = CLIPPED_LOSSES[loss_fn]
    config = loss_fn_config or {}
    return (float(config.get("clip_low_threshold", low)),
            float(config.get("clip_high_threshold", high)))


def clipped_fraction(tokens: SampledTokens, loss_fn: str, low: float, high: float) -> float:
    """The share of tokens the loss clips, as the trainer defines it for ``loss_fn``.

    ppo takes min(r*A, clip(r)*A), so a token is clipped when the clipped term is
    smaller (r above ``high`` with A > 0, below ``low`` with A < 0); cispo clips
    every ratio outside [low, high] whatever the advantage's sign.
    """
    ratio = np.exp(np.clip(tokens.log_ratio, -MAX_LOG_RATIO, MAX_LOG_RATIO))
    if loss_fn == "ppo":
        advantage = tokens.advantage
        took = np.clip(ratio, low, high) * advantage < ratio * advantage
    else:
        took = (ratio < low) | (ratio > high)
    return float(took.mean()) if took.size else math.nan


def policy_diagnostics(tokens: SampledTokens, loss_fn: str,
                       loss_fn_config: Mapping[str, float] | None = None) -> dict[str, float]:
    """KL sampler vs trainer (k1, k2, k3), ratio mean/max, ESS fraction, entropy, clipping."""
    n = tokens.sampler.size
    if n == 0:
        return {}
    log_ratio = np.clip(tokens.log_ratio, -MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = np.exp(log_ratio)
    abs_diff = np.abs(log_ratio)
    metrics = {
        "kl/sample_train_k1": float(-log_ratio.mean()),
        "kl/sample_train_k2": float(0.5 * (log_ratio ** 2).mean()),
        "kl/sample_train_k3": float((ratio - 1.0 - log_ratio).mean()),
        "diag/ratio_mean": float(ratio.mean()),
        "diag/ratio_max": float(ratio.max()),
        "diag/ess_frac": float(ratio.sum() ** 2 / (n * (ratio ** 2).sum())),
        # -mean log q of the tokens sampled: a one-sample estimate of the sampler's
        # per-token entropy (at temperature 1; the sampler's logprobs are of its
        # tempered distribution otherwise).
        "diag/entropy": float(-tokens.sampler.mean()),
        "diag/logprob_diff_max": float(abs_diff.max()),
        "diag/logprob_diff_p99": float(np.quantile(abs_diff, 0.99)),
        "diag/tokens": float(n),
    }
    thresholds = clip_thresholds(loss_fn, loss_fn_config)
    if thresholds is not None:
        metrics["diag/clip_frac"] = clipped_fraction(tokens, loss_fn, *thresholds)
    return metrics


def rollout_diagnostics(batch: RolloutBatch, current_version: int,
                        max_lag: int) -> dict[str, float]:
    """Reward spread inside groups, and how stale the episodes were (off-policy mode).

    ``diag/group_reward_std`` is the mean over groups of the std of their episodes'
    rewards: the signal group-centred advantages are made of (0 = nothing to learn).
    ``rollout/stale_frac`` is the share of episodes sampled from an older policy than
    the one being trained, with its parts ``rollout/stale_frac/lag<k>`` for k = 1..
    ``max_lag`` (``recipe.max_steps_off_policy``).
    """
    stds: list[float] = []
    lags: list[int] = []
    for group in batch.groups:
        ok = group.ok_trajectories()
        rewards = np.asarray([t.total_reward for t in ok], dtype=np.float64)
        if rewards.size >= 2:
            stds.append(float(rewards.std()))
        lags.extend(current_version - t.policy_version for t in ok)
    metrics: dict[str, float] = {
        "diag/group_reward_std": float(np.mean(stds)) if stds else math.nan}
    if lags:
        counts = np.bincount(np.clip(np.asarray(lags), 0, None))
        total = float(len(lags))
        metrics["rollout/staleness_max"] = float(max(lags))
        metrics["rollout/stale_frac"] = float(sum(counts[1:]) / total)
        for lag in range(1, max_lag + 1):
            metrics[f"rollout/stale_frac/lag{lag}"] = \
                float(counts[lag] / total) if lag < counts.size else 0.0
    return metrics


def divergent_tokens(tokens: SampledTokens, sequences_D: Sequence[TokenSequence],
                     decode: Callable[[list[int]], str], limit: int) -> list[dict[str, Any]]:
    """The ``limit`` sampled tokens whose trainer and sampler logprobs differ most.

    Only these few are decoded, so the table costs nothing next to a step.
    """
    if limit <= 0 or tokens.sampler.size == 0:
        return []
    abs_diff = np.abs(tokens.log_ratio)
    count = min(limit, abs_diff.size)
    top = np.argpartition(-abs_diff, count - 1)[:count]
    rows = []
    for i in top[np.argsort(-abs_diff[top])]:
        sequence = sequences_D[int(tokens.datum[i])]
        position = int(tokens.position[i])
        context = sequence.tokens[max(0, position - CONTEXT_TOKENS):position]
        rows.append({
            "token": decode([sequence.tokens[position]]), "context": decode(context),
            "sequence": int(tokens.datum[i]), "position": position,
            "sampler_logprob": float(tokens.sampler[i]),
            "trainer_logprob": float(tokens.trainer[i]),
            "diff": float(tokens.trainer[i] - tokens.sampler[i]),
            "advantage": float(tokens.advantage[i])})
    return rows


def step_diagnostics(sequences_D: Sequence[TokenSequence], trainer_D: Sequence[Sequence[float]],
                     loss_fn: str, loss_fn_config: Mapping[str, float] | None,
                     decode: Callable[[list[int]], str],
                     table_rows: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One step's token diagnostics and its divergent-token table, with their own cost
    (``time/diagnostics_s``, so a benchmark can hold it against the step)."""
    started = time.perf_counter()
    tokens = sampled_tokens(sequences_D, trainer_D)
    metrics = policy_diagnostics(tokens, loss_fn, loss_fn_config)
    rows = divergent_tokens(tokens, sequences_D, decode, table_rows)
    metrics["time/diagnostics_s"] = time.perf_counter() - started
    return metrics, rows
