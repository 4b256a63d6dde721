"""A user scorer, imported by dotted path in the tests: score(row, completion) -> float."""

from __future__ import annotations

from typing import Any


def even_length(row: dict[str, Any], completion: str) -> float:
    return 1.0 if len(completion) % 2 == row["parity"] else 0.0
