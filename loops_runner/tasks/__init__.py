"""The task registry: checkable questions that every recipe shares.

SFT data, RL prompts, preference pairs and evaluation sets all come from
here, so "accuracy" means the same thing in every recipe:

* :data:`FAMILIES` — the task families (generator, checker, wrong-answer maker);
* :func:`sample_rows` — rows ``{id, family, difficulty, prompt, answer}`` of the
  ``train`` or ``heldout`` split (the split of a question is fixed by its text,
  so the two never overlap);
* :func:`score` — ``score(row, completion) -> float`` in [0, 1];
* :func:`as_messages` / :func:`as_conversation` — rows as chat messages;
* :func:`wrong_answer` — a plausible wrong answer (rejected side of a pair).
"""

from loops_runner.tasks.families import FAMILIES, TaskFamily
from loops_runner.tasks.rows import (
    DEFAULT_DIFFICULTIES,
    DEFAULT_FAMILIES,
    Row,
    Split,
    as_conversation,
    as_messages,
    sample_rows,
    split_of,
    wrong_answer,
)
from loops_runner.tasks.scoring import normalise, score

__all__ = [
    "DEFAULT_DIFFICULTIES",
    "DEFAULT_FAMILIES",
    "FAMILIES",
    "Row",
    "Split",
    "TaskFamily",
    "as_conversation",
    "as_messages",
    "normalise",
    "sample_rows",
    "score",
    "split_of",
    "wrong_answer",
]
