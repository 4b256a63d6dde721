"""The user's own RL pieces, found by dotted or file path from the working directory.

* ``recipe.env=mypkg.envs:make_dataset``: ``make_dataset(setup, **recipe.env_args)``
  returns an :class:`~loops_runner.rl.types.RLDataset`.
* ``recipe.reward=mypkg.rewards:score`` with ``recipe.prompts=<JSONL or HF dataset>``:
  rows ``{"messages": [...], ...}`` or ``{"prompt": "...", ...}``; each reply is scored
  by ``score(prompt, completion, **extra_fields) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loops_runner.data.sources import DataError, load_rows
from loops_runner.rl.datasets import BuilderListDataset, DatasetSetup
from loops_runner.rl.message_env import Message, MessageEnvGroupBuilder, ProblemEnv
from loops_runner.rl.types import RLDataset, check_reward
from loops_runner.runner.recipes import load_callable

PROMPT_FIELDS = ("messages", "prompt")


def load_dataset_factory(target: str) -> Callable[..., RLDataset]:
    return load_callable(target, "recipe.env", "make_dataset")[1]


def load_reward(target: str) -> Callable[..., Any]:
    return load_callable(target, "recipe.reward", "score")[1]


def prompt_messages(row: dict[str, Any], where: str) -> list[Message]:
    """The conversation a prompt row opens with; a DataError names the row and field."""
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            raise DataError(f"{where}: field 'messages' must be a non-empty list of "
                            "{'role': str, 'content': str}")
        if messages[-1]["role"] == "assistant":
            raise DataError(f"{where}: field 'messages' ends with an assistant turn; a prompt "
                            "ends before the reply the policy writes")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(row.get("prompt"), str) and row["prompt"]:
        return [{"role": "user", "content": row["prompt"]}]
    raise DataError(f"{where}: needs a 'messages' list or a non-empty 'prompt' string; "
                    f"fields: {sorted(row)}")


def load_prompt_rows(source: str, split: str) -> list[dict[str, Any]]:
    """Read and validate every prompt row (before anything is provisioned)."""
    rows = load_rows(source, split=split)
    for number, row in enumerate(rows, start=1):
        prompt_messages(row, f"{source} row {number}")
    return rows


class _RowReward:
    """``score(prompt, completion, **extra)`` bound to one row, with a checked result."""

    def __init__(self, score: Callable[..., Any], target: str, prompt: str,
                 extra: dict[str, Any], where: str) -> None:
        self.score, self.target, self.prompt, self.extra = score, target, prompt, extra
        self.where = where

    def __call__(self, reply: str) -> float:
        value = self.score(self.prompt, reply, **self.extra)
        return check_reward(value, f"reward {self.target} on {self.where}")


def reward_dataset(rows: list[dict[str, Any]], score: Callable[..., Any], target: str,
                   setup: DatasetSetup, source: str) -> RLDataset:
    """One single-turn group per prompt row, scored by the user's reward function."""
    builders = []
    for number, row in enumerate(rows, start=1):
        where = f"{source} row {number}"
        messages = prompt_messages(row, where)
        prompt = messages[-1]["content"]
        extra = {k: v for k, v in row.items() if k not in PROMPT_FIELDS}
        check = _RowReward(score, target, prompt, extra, where)
        builders.append(MessageEnvGroupBuilder(
            lambda messages=messages, check=check: ProblemEnv(messages, check),
            setup.tokenizer, prompt=prompt))
    return BuilderListDataset(builders, setup.groups_per_batch, setup.seed)
