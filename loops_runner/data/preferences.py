"""Preference pairs for DPO: reading and checking rows, the bundled task set, rendering.

A row is ``{"prompt": str | messages, "chosen": str | message(s), "rejected": ...}``.
``chosen``/``rejected`` may also be whole conversations that repeat the prompt
(or, without a ``prompt`` column, share it as their common beginning). Rows
that are not valid pairs follow the source's ``bad_rows`` policy
(:mod:`loops_runner.data.checks`): stop at the first, or skip and count them
while they are at most half of the source.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loops_runner.data.chat import RenderedExample, prompt_tokens, render
from loops_runner.data.checks import check_rows
from loops_runner.data.sources import BadRowPolicy, DataError, read_source
from loops_runner.tasks import as_messages, sample_rows, wrong_answer

Messages = list[dict[str, str]]

# The bundled set: preference pairs made from the task registry.
TASKS_SOURCE = "tasks"


@dataclass(frozen=True)
class PreferencePair:
    prompt: Messages  # the conversation up to the response
    chosen: Messages  # the preferred response turn(s)
    rejected: Messages
    task: dict[str, Any] | None = None  # the task row, when the pair can be scored


@dataclass(frozen=True)
class PairSet:
    pairs: list[PreferencePair]
    bad_rows: int
    first_problem: str | None
    read: int = 0     # rows read from the source
    digest: str = ""  # their content


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def task_pairs(count: int, split: str, seed: int) -> list[PreferencePair]:
    """Pairs of the task registry: chosen = the answer, rejected = a plausible wrong one."""
    rows = sample_rows(count, split="heldout" if split == "heldout" else "train", seed=seed,
                       unique=split == "heldout")
    rng = random.Random(f"preference-pairs-{split}-{seed}")
    return [PreferencePair(as_messages(row), [_assistant(row["answer"])],
                           [_assistant(wrong_answer(row, rng))], row) for row in rows]


def _message_list(value: Any, field: str, where: str, default_role: str) -> Messages:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, list) or not items or not all(
            isinstance(m, Mapping) and "role" in m and "content" in m for m in items):
        raise DataError(f"{where}: field {field!r} must be text, a {{role, content}} message "
                        "or a non-empty list of them")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in items]


def pair_from_row(row: Mapping[str, Any], where: str) -> PreferencePair:
    """One checked pair, or a DataError naming the row and field."""
    for field in ("chosen", "rejected"):
        if row.get(field) is None:
            raise DataError(f"{where}: missing field {field!r} (found {sorted(row)})")
    chosen = _message_list(row["chosen"], "chosen", where, "assistant")
    rejected = _message_list(row["rejected"], "rejected", where, "assistant")
    if row.get("prompt") is not None:
        prompt = _message_list(row["prompt"], "prompt", where, "user")
        # Conversation style: each side repeats the prompt; it must be the same prompt.
        if chosen[:len(prompt)] == prompt:
            chosen = chosen[len(prompt):]
        if rejected[:len(prompt)] == prompt:
            rejected = rejected[len(prompt):]
    else:
        # Implicit prompt: both sides are whole conversations ending in the response.
        if chosen[:-1] != rejected[:-1]:
            raise DataError(f"{where}: 'chosen' and 'rejected' continue different prompts")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if not prompt:
        raise DataError(f"{where}: field 'prompt' is empty")
    for field, side in (("chosen", chosen), ("rejected", rejected)):
        if not side or side[0]["role"] != "assistant":
            raise DataError(f"{where}: field {field!r} must be an assistant response to the "
                            "prompt (a different prompt, or no response)")
        if not any(m["content"].strip() for m in side):
            raise DataError(f"{where}: field {field!r} is empty")
    if chosen == rejected:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same")
    return PreferencePair(prompt, chosen, rejected)


def load_pairs(source: str, *, split: str = "train", columns: Mapping[str, str] | None = None,
               bad_rows: BadRowPolicy = "stop",
               policy_key: str = "recipe.dataset.bad_rows") -> PairSet:
    """Every checked pair of ``source`` under the ``bad_rows`` policy (see data.checks)."""
    rows = read_source(source, split=split, columns=columns)
    checked = check_rows(rows, pair_from_row, policy=bad_rows, policy_key=policy_key)
    return PairSet(checked.items, checked.skipped, checked.first_problem, checked.read,
                   rows.digest)


# -- rendering ----------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPair:
    chosen: RenderedExample
    rejected: RenderedExample
    pair: PreferencePair


def _response_only(example: RenderedExample, prompt_length: int) -> RenderedExample:
    # render() marks every assistant turn; earlier turns of a multi-turn prompt
    # are context, not the response being preferred.
    weights = [0.0 if i < prompt_length else w for i, w in enumerate(example.weights)]
    return RenderedExample(example.tokens, weights)


def render_pair(tokenizer: Any, pair: PreferencePair, max_length: int) -> RenderedPair | None:
    """Both sides through the chat template, loss on the response only; None if unusable.

    Unusable: a side with no response token left (e.g. truncated away), or two
    sides that render to the same tokens.
    """
    prompt_length = len(prompt_tokens(tokenizer, pair.prompt))
    chosen = _response_only(render(tokenizer, pair.prompt + pair.chosen, "assistant",
                                   max_length), prompt_length)
    rejected = _response_only(render(tokenizer, pair.prompt + pair.rejected, "assistant",
                                     max_length), prompt_length)
    if chosen.trained_tokens == 0 or rejected.trained_tokens == 0 or \
            chosen.tokens == rejected.tokens:
        return None
    return RenderedPair(chosen, rejected, pair)
