"""The user's own RL pieces, found by dotted or file path from the working directory.

* ``recipe.env=mypkg.envs:make_dataset``: ``make_dataset(setup, **recipe.env_args)``
  returns an :class:`~loops_runner.rl.types.RLDataset`.
* ``recipe.reward=mypkg.rewards:score`` with ``recipe.prompts=<file or HF dataset>``:
  rows ``{"messages": [...], ...}`` or ``{"prompt": "...", ...}``; each reply is scored
  by ``score(prompt, completion, **extra_fields) -> float``.

Both load (and the prompt rows are read and checked) before anything is provisioned;
every failure is one line naming the key (see :mod:`loops_runner.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from loops_runner.data.checks import check_rows
from loops_runner.data.prompts import PROMPT_FIELDS, Messages, prompt_messages
from loops_runner.data.sources import BadRowPolicy, Row, Rows, read_source
from loops_runner.plugins import check_signature, load_callable
from loops_runner.rl.datasets import BuilderListDataset, DatasetSetup
from loops_runner.rl.message_env import MessageEnvGroupBuilder, ProblemEnv
from loops_runner.rl.types import EnvGroupBuilder, RLDataset, check_reward

REWARD_KEY = "recipe.reward"


def load_dataset_factory(target: str) -> Callable[..., RLDataset]:
    return load_callable(target, "recipe.env", "make_dataset", call=("setup",))[1]


def load_reward(target: str) -> Callable[..., Any]:
    # Its call is checked against the prompt rows' fields (check_reward_fits).
    return load_callable(target, REWARD_KEY, "score")[1]


@dataclass(frozen=True)
class PromptRow:
    """One checked prompt row: where it stands, its conversation, the fields a reward reads."""

    where: str
    messages: Messages
    extra: dict[str, Any]


def _prompt_row(row: Row, where: str) -> PromptRow:
    return PromptRow(where, prompt_messages(row, where),
                     {k: v for k, v in row.items() if k not in PROMPT_FIELDS})


def read_prompt_rows(source: str, split: str, bad_rows: BadRowPolicy,
                     policy_key: str) -> tuple[list[PromptRow], Rows, int, str | None]:
    """Every checked prompt row (before anything is provisioned), the raw rows, and how
    many were skipped with the first reason."""
    rows = read_source(source, split=split)
    checked = check_rows(rows, _prompt_row, policy=bad_rows, policy_key=policy_key)
    return checked.items, rows, checked.skipped, checked.first_problem


def check_reward_fits(score: Callable[..., Any], target: str, rows: Sequence[PromptRow]) -> None:
    """Refuse a reward that cannot take a row's extra fields as keyword arguments."""
    check_signature(score, ("prompt", "completion"), REWARD_KEY, target,
                    **(rows[0].extra if rows else {}))


class _RowReward:
    """``score(prompt, completion, **extra)`` bound to one row, with a checked result."""

    def __init__(self, score: Callable[..., Any], target: str, row: PromptRow) -> None:
        self.score, self.target, self.row = score, target, row
        self.prompt = row.messages[-1]["content"]

    def __call__(self, reply: str) -> float:
        value = self.score(self.prompt, reply, **self.row.extra)
        return check_reward(value, f"reward {self.target} on {self.row.where}")


def reward_builders(rows: Sequence[PromptRow], score: Callable[..., Any], target: str,
                    tokenizer: Any) -> list[EnvGroupBuilder]:
    """One single-turn group per prompt row, scored by the user's reward function."""
    builders: list[EnvGroupBuilder] = []
    for row in rows:
        check = _RowReward(score, target, row)
        builders.append(MessageEnvGroupBuilder(
            lambda messages=row.messages, check=check: ProblemEnv(messages, check),
            tokenizer, prompt=check.prompt))
    return builders


def reward_dataset(rows: Sequence[PromptRow], score: Callable[..., Any], target: str,
                   setup: DatasetSetup) -> RLDataset:
    return BuilderListDataset(reward_builders(rows, score, target, setup.tokenizer),
                              setup.groups_per_batch, setup.seed)
