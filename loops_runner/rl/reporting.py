"""Rollout metrics (stable ``rollout/*`` names), ``rollouts.jsonl`` transcripts and
``divergence.jsonl`` (each step's tokens whose trainer and sampler logprobs differ most)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loops_runner.rl.advantages import is_constant
from loops_runner.rl.rollouts import RolloutBatch
from loops_runner.rl.types import TrajectoryGroup

ROLLOUTS_FILE = "rollouts.jsonl"
DIVERGENCE_FILE = "divergence.jsonl"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def rollout_metrics(batch: RolloutBatch, current_version: int) -> dict[str, float]:
    """Reward, spread, errors, length and staleness of one step's episodes."""
    episodes = [t for g in batch.groups for t in g.trajectories_G]
    ok = [t for t in episodes if not t.failed]
    rewards = [t.total_reward for t in ok]
    mean = _mean(rewards)
    metrics: dict[str, float] = {
        "rollout/reward_mean": mean,
        "rollout/reward_std": math.sqrt(_mean([(r - mean) ** 2 for r in rewards]))
        if rewards else math.nan,
        "rollout/frac_mixed": _mean([0.0 if is_constant(g.rewards_G()) else 1.0
                                     for g in batch.groups]),
        "rollout/tokens": float(sum(t.action_tokens for t in ok)),
        "rollout/episode_len": _mean([float(t.action_tokens) for t in ok]),
        "rollout/turns": _mean([float(len(t.transitions)) for t in ok]),
        "rollout/errors": float(len(episodes) - len(ok)),
        "rollout/staleness": _mean([float(current_version - t.policy_version) for t in ok]),
        "time/sample_s": batch.sample_s,
    }
    by_tag: dict[str, list[float]] = {}
    env_metrics: dict[str, list[float]] = {}
    for group in batch.groups:
        for trajectory in group.ok_trajectories():
            for tag in group.tags:
                by_tag.setdefault(tag, []).append(trajectory.total_reward)
            for transition in trajectory.transitions:
                for name, value in transition.metrics.items():
                    env_metrics.setdefault(name, []).append(float(value))
    for tag, values in by_tag.items():
        metrics[f"rollout/{tag}/reward_mean"] = _mean(values)
    for name, values in env_metrics.items():
        metrics[f"rollout/env/{name}"] = _mean(values)
    return metrics


def error_lines(batch: RolloutBatch, limit: int = 3) -> list[str]:
    """The first few distinct episode errors of a batch, for the console."""
    seen: list[str] = []
    for group in batch.groups:
        for trajectory in group.trajectories_G:
            if trajectory.error and trajectory.error not in seen:
                seen.append(trajectory.error)
    return seen[:limit]


def transcript(step: int, index: int, group: TrajectoryGroup,
               advantages_G: Sequence[float]) -> dict[str, Any]:
    """One ``rollouts.jsonl`` line."""
    trajectories = group.trajectories_G
    return {
        "step": step,
        "policy_version": min((t.policy_version for t in trajectories), default=0),
        "group": index,
        "prompt": group.prompt,
        "completions": list(group.completions_G),
        "rewards": [None if math.isnan(r) else r for r in group.rewards_G()],
        "advantages": list(advantages_G),
        "errors": [t.error for t in trajectories],
        "tags": list(group.tags),
    }


def step_transcripts(step: int, groups: Sequence[TrajectoryGroup],
                     advantages_by_group: Sequence[Sequence[float]],
                     count: int) -> list[dict[str, Any]]:
    """The ``rollouts.jsonl`` lines of a step's first ``count`` groups."""
    return [transcript(step, index, group, advantages_G) for index, (group, advantages_G)
            in enumerate(zip(groups, advantages_by_group, strict=True)) if index < count]


def _append_lines(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    with path.open("a") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


def write_transcripts(run_dir: Path, lines: Sequence[dict[str, Any]]) -> None:
    _append_lines(run_dir / ROLLOUTS_FILE, lines)


DIVERGENT_COLUMNS = ["context", "token", "sampler_logprob", "trainer_logprob", "diff",
                     "advantage", "sequence", "position"]


def log_divergent_tokens(run_dir: Path, metrics: Any, step: int,
                         rows: Sequence[dict[str, Any]]) -> None:
    """One ``divergence.jsonl`` line per step (none when nothing was trained), and the
    same rows as the W&B table ``diag/divergent_tokens`` of that step."""
    if not rows:
        return
    _append_lines(run_dir / DIVERGENCE_FILE, [{"step": step, "tokens": list(rows)}])
    metrics.log_table("diag/divergent_tokens", DIVERGENT_COLUMNS,
                      [[row[column] for column in DIVERGENT_COLUMNS] for row in rows],
                      step=step)

