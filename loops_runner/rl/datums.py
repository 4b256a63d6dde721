"""Training datums from sampled trajectories: exactly the sampled tokens, the sampler's
logprobs and per-token advantages, for the policy losses (importance_sampling, ppo,
cispo, dro).

A multi-turn episode becomes one datum when each observation extends the previous
observation plus action (the usual case with a chat template); otherwise each turn
is a datum of its own. Observation tokens are context only: weight 0, advantage 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from loops_runner.rl.types import Trajectory
from loops_runner.wire import Datum, ModelInput, TensorData


@dataclass
class TokenSequence:
    """A full token sequence with per-token sampler logprobs, advantages and weights."""

    tokens: list[int]
    logprobs: list[float]
    advantages: list[float]
    weights: list[float]

    def append(self, tokens: Sequence[int], logprobs: Sequence[float], advantage: float,
               trained: bool) -> None:
        self.tokens.extend(tokens)
        self.logprobs.extend(logprobs if trained else [0.0] * len(tokens))
        self.advantages.extend([advantage if trained else 0.0] * len(tokens))
        self.weights.extend([1.0 if trained else 0.0] * len(tokens))

    def to_datum(self) -> Datum:
        # Position i of the input predicts token i + 1: every per-token input is
        # shifted by one so it lines up with its target.
        n = len(self.tokens) - 1
        return Datum(
            model_input=ModelInput.from_ints(self.tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": TensorData(data=self.tokens[1:], dtype="int64", shape=[n]),
                "logprobs": TensorData(data=self.logprobs[1:], dtype="float32", shape=[n]),
                "advantages": TensorData(data=self.advantages[1:], dtype="float32", shape=[n]),
                "weights": TensorData(data=self.weights[1:], dtype="float32", shape=[n]),
            },
        )


def trajectory_sequences(trajectory: Trajectory,
                         advantages_T: Sequence[float] | float) -> list[TokenSequence]:
    """The token sequences of one episode; ``advantages_T`` is one value per turn or one
    for the whole episode."""
    turns = trajectory.transitions
    per_turn = [float(advantages_T)] * len(turns) if isinstance(advantages_T, int | float) \
        else [float(a) for a in advantages_T]
    sequences: list[TokenSequence] = []
    current: TokenSequence | None = None
    for turn, advantage in zip(turns, per_turn, strict=True):
        if len(turn.action_logprobs) != len(turn.action):
            raise ValueError(f"a turn has {len(turn.action)} sampled tokens but "
                             f"{len(turn.action_logprobs)} logprobs")
        if current is not None and turn.observation[:len(current.tokens)] == current.tokens:
            current.append(turn.observation[len(current.tokens):], [], 0.0, trained=False)
        else:
            current = TokenSequence([], [], [], [])
            sequences.append(current)
            current.append(turn.observation, [], 0.0, trained=False)
        current.append(turn.action, turn.action_logprobs, advantage, trained=True)
    return [s for s in sequences if len(s.tokens) >= 2]


def sampled_logprobs_D(sequences_D: Sequence[TokenSequence]) -> list[list[float | None]]:
    """The sampler's logprob per target position (None where nothing was sampled)."""
    return [[lp if w else None for lp, w in zip(s.logprobs[1:], s.weights[1:], strict=True)]
            for s in sequences_D]


def mean_abs_logprob_diff(sampler_D: Sequence[Sequence[float | None]],
                          trainer_D: Sequence[Sequence[float]]) -> float:
    """Mean |sampler logprob − trainer logprob| over sampled tokens (``kl/sample_train``).

    On the same weights the two must agree; a gap means the sampler and trainer
    compute different models, and importance ratios would be off.
    """
    total, count = 0.0, 0
    for sampler_T, trainer_T in zip(sampler_D, trainer_D, strict=True):
        for q, p in zip(sampler_T, trainer_T, strict=True):
            if q is None or p is None or math.isnan(p):
                continue
            total += abs(q - p)
            count += 1
    return total / count if count else 0.0
