"""Task rows: questions drawn from the families, split into train and held-out for good.

A question belongs to the held-out split when a hash of its text says so, not
by where it was drawn: the same question is held out in every dataset, recipe
and seed, so no training set can ever contain an evaluation question.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any, Literal

from loops_runner.tasks.families import FAMILIES

Split = Literal["train", "heldout"]
Row = dict[str, Any]

# The default mix every recipe uses unless told otherwise: the families the
# built-in ``tiny`` (1.3 M parameters, minutes of CPU pretraining) sometimes
# gets right. Multi-digit arithmetic and first letters stay in the registry
# (``families: [...]``) for larger models; tiny's held-out accuracy on them is
# near 0% before and after a default run (docs/tiny-model.md), so in the
# default mix they would only dilute what a run shows.
DEFAULT_FAMILIES: tuple[str, ...] = ("capitals", "count_letters", "larger", "last_word",
                                     "repeat", "reverse", "sort_words")
DEFAULT_DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
HELDOUT_PERCENT = 20
# Draws per row before concluding a family/difficulty has no more distinct questions.
_MAX_DRAWS_PER_ROW = 200


def split_of(family: str, question: str) -> Split:
    digest = hashlib.sha256(f"{family}\n{question}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT else "train"


def make_row(family: str, difficulty: int, question: str, answer: str) -> Row:
    return {
        "id": hashlib.sha256(f"{family}\n{question}".encode()).hexdigest()[:12],
        "family": family,
        "difficulty": difficulty,
        "prompt": question,
        "answer": answer,
    }


def sample_rows(count: int, *, split: Split = "train",
                families: Sequence[str] | None = None,
                difficulties: Sequence[int] = DEFAULT_DIFFICULTIES,
                seed: int = 0, unique: bool = False) -> list[Row]:
    """``count`` rows of ``split``, families and difficulties drawn round-robin.

    Round-robin (rather than random choice) keeps every family equally
    represented in small evaluation sets. ``unique=True`` never repeats a
    question (evaluation sets); small families then run out and the others
    fill in.
    """
    names = list(families) if families is not None else list(DEFAULT_FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(sorted(FAMILIES))}")
    if not names or not difficulties:
        raise ValueError("sample_rows needs at least one family and one difficulty")
    if any(d not in (1, 2, 3) for d in difficulties):
        raise ValueError(f"difficulties must be 1, 2 or 3, got {list(difficulties)}")
    rng = random.Random(f"tasks-{split}-{seed}")
    cells = [(n, d) for n in names for d in difficulties]
    exhausted: set[tuple[str, int]] = set()
    seen: set[str] = set()
    rows: list[Row] = []
    cursor = 0
    while len(rows) < count:
        live = [c for c in cells if c not in exhausted]
        if not live:
            raise ValueError(f"only {len(rows)} distinct {split} questions exist for families "
                             f"{names} at difficulties {list(difficulties)}; asked for {count}")
        name, difficulty = live[cursor % len(live)]
        cursor += 1
        for _ in range(_MAX_DRAWS_PER_ROW):
            question, answer = FAMILIES[name].generate(rng, difficulty)
            if split_of(name, question) != split or (unique and question in seen):
                continue
            seen.add(question)
            rows.append(make_row(name, difficulty, question, answer))
            break
        else:
            exhausted.add((name, difficulty))
    return rows


def wrong_answer(row: Row, rng: random.Random) -> str:
    """A plausible answer to ``row`` that its scorer refuses (for preference pairs)."""
    from loops_runner.tasks.scoring import score

    family = FAMILIES[row["family"]]
    for _ in range(20):
        candidate = family.wrong_answer(row["prompt"], row["answer"], rng)
        if score(row, candidate) == 0.0:
            return candidate
    raise ValueError(f"could not find a wrong answer for {row['prompt']!r}")


def as_messages(row: Row) -> list[dict[str, str]]:
    """The prompt of a row as chat messages (the user turn)."""
    return [{"role": "user", "content": row["prompt"]}]


def as_conversation(row: Row) -> dict[str, list[dict[str, str]]]:
    """A row with its answer as a complete chat, for supervised data."""
    return {"messages": [*as_messages(row), {"role": "assistant", "content": row["answer"]}]}
