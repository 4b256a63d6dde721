"""Comparing a completion with a task's answer.

A checker should accept what a careful grader accepts and nothing else: the
exact answer, give or take surrounding whitespace, a trailing full stop, quotes
and (for text that is not about case) letter case. It never searches the
completion for the answer, so "41 or 42" does not score as 42.
"""

from __future__ import annotations

import re
from typing import Any

from loops_runner.tasks.families import FAMILIES, TaskFamily

_TRAILING = ".!?,;:"
_QUOTES = "\"'`"
_INTEGER = re.compile(r"[+-]?\d+")


def normalise(text: str, *, case_sensitive: bool = False) -> str:
    """The canonical form two equal answers share."""
    text = " ".join(text.split())
    text = text.strip(_QUOTES).rstrip(_TRAILING).strip(_QUOTES).strip()
    return text if case_sensitive else text.lower()


def matches(family: TaskFamily, answer: str, completion: str) -> bool:
    got = normalise(completion, case_sensitive=family.case_sensitive)
    want = normalise(answer, case_sensitive=family.case_sensitive)
    if family.numeric:
        return bool(_INTEGER.fullmatch(got)) and int(got) == int(want)
    return got == want


def score(row: dict[str, Any], completion: str) -> float:
    """1.0 when ``completion`` answers the task row, else 0.0 (the registry's scorer).

    ``row`` is a task row (see :func:`loops_runner.tasks.rows.sample_rows`): it
    needs ``family`` and ``answer``.
    """
    try:
        family = FAMILIES[row["family"]]
    except KeyError:
        raise ValueError(f"task row has unknown family {row.get('family')!r}; known: "
                         f"{', '.join(sorted(FAMILIES))}") from None
    return 1.0 if matches(family, str(row["answer"]), completion) else 0.0
