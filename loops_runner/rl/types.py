"""The RL vocabulary: episodes, groups of episodes, and a dataset of groups.

Names follow tinker-cookbook's, so a cookbook user feels at home:

* :class:`Env` — one episode. ``initial_observation()`` gives the tokens the
  policy sees first; ``step(action_tokens)`` answers with a :class:`StepResult`
  (reward, whether the episode is over, the next observation, metrics).
* :class:`EnvGroupBuilder` — makes the ``group_size`` episodes that share one
  prompt (their rewards are compared with each other to form advantages) and
  may add group-level rewards (e.g. pairwise preferences) once all are done.
* :class:`RLDataset` — the groups of each training step: ``get_batch(index)``.
* :class:`Transition` / :class:`Trajectory` / :class:`TrajectoryGroup` — what a
  rollout produced: tokens, the sampler's logprobs, rewards, and an error
  message when the episode failed (a failed episode is never trained on).

Observations and actions are token lists; message-level envs live in
``loops_runner.rl.message_env`` and render messages with the chat template.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Observation = list[int]
Metrics = dict[str, float]


@dataclass
class StepResult:
    """What an env answers to one action."""

    reward: float
    episode_done: bool
    # The tokens the policy sees next (the whole context, not only the new part);
    # ignored when the episode is done.
    next_observation: Observation = field(default_factory=list)
    metrics: Metrics = field(default_factory=dict)


class Env(ABC):
    """One episode. Single use: a group makes a fresh env per sample."""

    @abstractmethod
    def initial_observation(self) -> Observation:
        """The prompt tokens of the first turn."""

    @abstractmethod
    def step(self, action: list[int]) -> StepResult:
        """Take the sampled tokens of one turn; say what happened."""

    def stop_sequences(self) -> list[str] | None:
        """Strings that end a turn besides the end-of-sequence token (None: EOS only)."""
        return None


class EnvGroupBuilder(ABC):
    """Makes the envs of one group (same prompt) and scores the group as a whole."""

    @abstractmethod
    def make_envs(self, group_size: int) -> Sequence[Env]:
        """``group_size`` fresh envs on the same problem."""

    def compute_group_rewards(self, trajectories: Sequence[Trajectory]) -> list[float]:
        """Extra reward per trajectory once the whole group is done (default: none)."""
        return [0.0] * len(trajectories)

    def prompt_text(self) -> str:
        """A readable form of the prompt for ``rollouts.jsonl``."""
        return ""

    def logging_tags(self) -> list[str]:
        """Tags (e.g. the task family) that group rollout metrics: ``rollout/<tag>/...``."""
        return []


class RLDataset(ABC):
    """The groups of each training step."""

    @abstractmethod
    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        """The groups of batch ``index`` (``0 <= index < len(self)``; the recipe wraps
        around). A pure function of the index, so a resumed run sees the same prompts."""

    @abstractmethod
    def __len__(self) -> int:
        """How many distinct batches there are."""


@dataclass
class Transition:
    """One turn: what the policy saw, what it sampled (with the sampler's logprobs)."""

    observation: Observation
    action: list[int]
    action_logprobs: list[float]
    reward: float = 0.0
    episode_done: bool = False
    metrics: Metrics = field(default_factory=dict)


@dataclass
class Trajectory:
    """One episode's turns; ``error`` says why it failed (then it is never trained on)."""

    transitions: list[Transition] = field(default_factory=list)
    error: str | None = None
    group_reward: float = 0.0
    policy_version: int = 0

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def total_reward(self) -> float:
        return sum(t.reward for t in self.transitions) + self.group_reward

    @property
    def action_tokens(self) -> int:
        return sum(len(t.action) for t in self.transitions)


@dataclass
class TrajectoryGroup:
    """The episodes of one group, with what the recipe needs to log and train."""

    trajectories_G: list[Trajectory]
    prompt: str = ""
    completions_G: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def ok_trajectories(self) -> list[Trajectory]:
        return [t for t in self.trajectories_G if not t.failed]

    def rewards_G(self) -> list[float]:
        """Total reward per episode (NaN for a failed one)."""
        return [math.nan if t.failed else t.total_reward for t in self.trajectories_G]


def check_reward(value: Any, where: str) -> float:
    """A reward as a finite float, or a ValueError that names ``where`` and the value."""
    if not isinstance(value, numbers.Real):  # bools and numpy scalars are fine
        raise ValueError(f"{where} returned {value!r} ({type(value).__name__}); "
                         "a reward must be a finite number")
    reward = float(value)
    if not math.isfinite(reward):
        raise ValueError(f"{where} returned {reward!r}; a reward must be a finite number")
    return reward
