"""The one table (and JSON document) that ``python -m benchmarks`` prints and writes.

A row is either a measured ``Result`` or a ``Failure`` (a measure that raised):
failures are rows too, so one broken measure never hides the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.suite import Result

COLUMNS = ("measure", "ours", "anchor", "value", "goal", "status", "rounds")


@dataclass(frozen=True)
class Failure:
    """A measure module that raised instead of returning results."""

    measure: str
    error: str

    def as_json(self) -> dict[str, Any]:
        return {"measure": self.measure, "status": "error", "error": self.error,
                "passed": False}


@dataclass(frozen=True)
class Skip:
    """A measure that did not run here, and the one line that says why."""

    measure: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"measure": self.measure, "status": "skip", "reason": self.reason,
                "passed": None}


Row = Result | Failure | Skip


def status(row: Row) -> str:
    """``pass``/``fail`` against the goal, ``report`` when there is none, ``error``."""
    if isinstance(row, Failure):
        return "error"
    if isinstance(row, Skip):
        return "skip"
    passed = row.passed
    if passed is None:
        return "report"
    return "pass" if passed else "fail"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _goal(row: Result) -> str:
    if row.goal is None or row.direction == "report":
        return "-"
    sign = ">=" if row.direction == "at_least" else "<="
    return f"{sign} {_number(row.goal)}"


def cells(row: Row) -> tuple[str, ...]:
    if isinstance(row, Failure):
        first_line = (row.error.strip().splitlines() or ["?"])[-1]
        return (row.measure, "-", "-", first_line[:60], "-", "error", "-")
    if isinstance(row, Skip):
        return (row.measure, "-", "-", "-", "-", "skip", "-")
    unit = f" {row.unit}" if row.unit else ""
    return (row.measure, f"{_number(row.ours)}{unit}",
            "-" if row.anchor is None else f"{_number(row.anchor)}{unit}",
            _number(row.value), _goal(row), status(row), str(len(row.rounds) or "-"))


def render(rows: list[Row], *, rounds: int, quick: bool) -> str:
    """A plain-text table: one line per row, then the notes of the rows that have one."""
    header = (f"python -m benchmarks{' --quick' if quick else ''}: ours vs anchor in the same "
              f"run, rounds interleaved; ours/anchor are medians over up to {rounds} rounds "
              "(the rounds column says how many); value = the compared figure "
              "(a ratio, or ours itself where the anchor is only shown)")
    table = [COLUMNS, *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = [header, ""]
    for n, line in enumerate(table):
        lines.append("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    notes = [f"  {row.measure}: {row.note if isinstance(row, Result) else row.reason}"
             for row in rows if (isinstance(row, Result) and row.note) or isinstance(row, Skip)]
    if notes:
        lines += ["", "notes:", *notes]
    counts = {s: sum(status(row) == s for row in rows) for s in ("pass", "fail", "report",
                                                                 "skip", "error")}
    lines += ["", ", ".join(f"{n} {s}" for s, n in counts.items())]
    return "\n".join(lines)


def document(rows: list[Row], *, machine: dict[str, Any], quick: bool, rounds: int,
             seconds: dict[str, float]) -> dict[str, Any]:
    """The JSON written by ``--json``: the machine, the settings, every row."""
    results = []
    for row in rows:
        entry = row.as_json()
        entry["status"] = status(row)
        results.append(entry)
    return {"machine": machine, "quick": quick, "rounds": rounds,
            "seconds_per_module": seconds, "results": results}
