"""The contract between ``python -m benchmarks`` and its measures.

A measure is a module in ``benchmarks/measures/`` with a function
``run(ctx: BenchContext) -> list[Result]``. It measures *ours* and its
*anchor* side by side in the same process run (rounds interleaved, so machine
noise hits both alike), never against a stored baseline, and reports the
median over rounds (every round's value is kept in ``rounds``).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# How a ratio (or an absolute figure) is compared to its goal.
Direction = Literal["at_least", "at_most", "report"]


@dataclass(frozen=True)
class BenchContext:
    """What every measure gets from the command line."""

    quick: bool
    # A data home with the built-in tiny prepared (shared by all measures).
    home: Path
    # A scratch folder the measure may write into (its own subfolder).
    work: Path
    # Rounds per measure (each round measures ours and the anchor once).
    rounds: int
    # torch threads for this process and the servers it starts (None: torch's choice).
    threads: int | None

    def scratch(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Result:
    """One row of the table."""

    measure: str
    # Median over rounds of ours and the anchor, in ``unit``.
    ours: float
    anchor: float | None
    unit: str
    # The compared figure: ours / anchor (or anchor / ours for "lower is
    # better" costs, as the measure says in ``note``), or an absolute value.
    value: float
    goal: float | None
    direction: Direction
    rounds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def passed(self) -> bool | None:
        if self.direction == "report" or self.goal is None:
            return None
        if self.direction == "at_least":
            return self.value >= self.goal
        return self.value <= self.goal

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class Skipped(Exception):
    """Raised by a measure that cannot run here (an optional package is absent); the
    message, one line, says why and how to enable it. The suite prints it as a
    ``skip`` row and counts no failure."""


def median(values: list[float]) -> float:
    return float(statistics.median(values))
