"""Guess the number: a multi-turn env with higher/lower feedback.

The policy guesses a secret integer in ``[1, high]``; each wrong guess is
answered "higher" or "lower" until ``max_guesses`` run out. Reward: 1 for
finding it (minus a little per extra guess), 0 otherwise.
``recipe.env=loops_runner.rl.envs.guess_number:make_dataset``.
"""

from __future__ import annotations

import random
import re

from loops_runner.rl.datasets import BuilderListDataset, DatasetSetup
from loops_runner.rl.message_env import Message, MessageEnv, MessageEnvGroupBuilder, MessageStep

_NUMBER = re.compile(r"[+-]?\d+")
STEP_PENALTY = 0.1


class GuessNumberEnv(MessageEnv):
    def __init__(self, secret: int, high: int, max_guesses: int) -> None:
        self.secret, self.high, self.max_guesses = secret, high, max_guesses
        self.guesses = 0

    def initial_messages(self) -> list[Message]:
        return [{"role": "user", "content": f"Guess my number from 1 to {self.high}. "
                 "Reply with one number."}]

    def step_reply(self, reply: str) -> MessageStep:
        self.guesses += 1
        found = _NUMBER.search(reply)
        guess = int(found.group()) if found else None
        metrics = {"valid_guess": float(guess is not None)}
        if guess == self.secret:
            metrics["solved"] = 1.0
            return MessageStep(1.0 - STEP_PENALTY * (self.guesses - 1), True, metrics=metrics)
        if self.guesses >= self.max_guesses:
            metrics["solved"] = 0.0
            return MessageStep(0.0, True, metrics=metrics)
        hint = "Not a number." if guess is None else ("Higher." if guess < self.secret
                                                       else "Lower.")
        return MessageStep(0.0, False, [{"role": "user", "content": hint}], metrics)


def make_dataset(setup: DatasetSetup, high: int = 10, max_guesses: int = 4,
                 num_problems: int = 200) -> BuilderListDataset:
    rng = random.Random(f"guess-{setup.seed}")
    builders = []
    for _ in range(num_problems):
        secret = rng.randint(1, high)
        builders.append(MessageEnvGroupBuilder(
            lambda secret=secret: GuessNumberEnv(secret, high, max_guesses), setup.tokenizer,
            prompt=f"guess the number (secret {secret} of 1..{high})", tags=["guess_number"]))
    return BuilderListDataset(builders, setup.groups_per_batch, setup.seed)
