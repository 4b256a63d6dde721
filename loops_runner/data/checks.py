"""Checking every row before anything is provisioned, with one policy for every recipe.

A recipe turns each raw row into what it trains on (a chat, a prompt, a pair)
with a parser that raises :class:`DataError` naming the row and field.
:func:`check_rows` runs the parser over all rows and applies the source's
``bad_rows`` policy:

* ``stop`` (the default): the first bad row stops the run, with how many rows are
  bad and the one override that trains on the rest;
* ``skip``: bad rows are left out and counted, unless more than half of the source
  is bad (then the data, not a few rows, is wrong, and the run stops).

:class:`DataSummary` is the one line the runner prints before provisioning:
rows read, train / eval, skipped and the first reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loops_runner.data.sources import BadRowPolicy, DataError, Row, Rows

T = TypeVar("T")

# Under ``skip``, stop when more than this fraction of a source's rows are bad.
MAX_BAD_FRACTION = 0.5


@dataclass(frozen=True)
class Checked(Generic[T]):
    items: list[T]
    read: int                  # rows read from the source
    skipped: int               # bad rows left out (``skip`` policy)
    first_problem: str | None  # the first bad row's reason


def check_rows(rows: Rows, parse: Callable[[Row, str], T], *, policy: BadRowPolicy,
               policy_key: str) -> Checked[T]:
    """Parse every row; apply ``policy`` to the bad ones (``policy_key`` names the knob)."""
    items: list[T] = []
    problems: list[str] = []
    for index, row in enumerate(rows.rows):
        try:
            items.append(parse(row, rows.where(index)))
        except DataError as error:
            problems.append(str(error))
    total = len(rows.rows)
    if problems and policy == "stop":
        others = (f"; {policy_key}=skip trains on the other {total - len(problems)}"
                  if len(problems) <= MAX_BAD_FRACTION * total else "")
        raise DataError(f"{problems[0]} ({len(problems)} of {total} rows bad{others})")
    if len(problems) > MAX_BAD_FRACTION * total:
        raise DataError(f"{rows.source}: {len(problems)} of {total} rows are bad, more than "
                        f"half; first: {problems[0]}")
    return Checked(items, total, len(problems), problems[0] if problems else None)


@dataclass(frozen=True)
class DataSummary:
    """What a recipe read, said in one line before anything is provisioned."""

    source: str
    read: int
    train: int
    eval: int
    skipped: int = 0
    first_problem: str | None = None
    notes: tuple[str, ...] = ()  # guidance, e.g. that the data makes a short run

    def lines(self) -> list[str]:
        text = (f"data: {self.source}: {self.read} rows read, {self.train} train / "
                f"{self.eval} eval, {self.skipped} skipped")
        if self.skipped:
            text += f" (first: {self.first_problem})"
        return [text, *self.notes]


# At most this share of a source is held out, so small data keeps most rows to train on.
MAX_HELD_OUT_FRACTION = 0.2


def held_out_count(total: int, wanted: int, source: str, what: str = "rows") -> int:
    """How many of ``total`` items to hold out: ``wanted``, at most a fifth (at least one)."""
    held = min(wanted, max(1, int(total * MAX_HELD_OUT_FRACTION)))
    if total < 2:
        raise DataError(f"{source}: {total} usable {what}; at least 2 are needed (one to train "
                        "on, one held out for evaluation)")
    return held


# Fewer optimizer steps than this get a line before provisioning saying how to have more.
FEW_STEPS = 30


def short_run_notes(cfg: Any, train_size: int, unit: str) -> tuple[str, ...]:
    """A line when the data makes a short run: how many steps, and the knob that adds more.

    ``cfg`` is an epoch-based recipe config (``epochs``, ``batch_size``, ``max_steps``
    and the ``OptimConfig`` warmup).
    """
    from loops_runner.optim import warmup_steps

    per_epoch = max(1, train_size // cfg.batch_size)
    natural = cfg.epochs * per_epoch
    steps = min(cfg.max_steps, natural) if cfg.max_steps else natural
    if steps >= FEW_STEPS:
        return ()
    how = (f"raise recipe.max_steps (now {cfg.max_steps})" if steps < natural
           else f"raise recipe.epochs (now {cfg.epochs})")
    warmup = warmup_steps(cfg, steps)
    capped = (f"; warmup capped at {warmup} of them (recipe.warmup_steps={cfg.warmup_steps})"
              if warmup < cfg.warmup_steps else "")
    return (f"plan: only {steps} optimizer steps ({cfg.epochs} epochs × {per_epoch} "
            f"batch{'es' if per_epoch > 1 else ''} of {cfg.batch_size} from {train_size} "
            f"{unit}){capped}; for more, {how} or lower recipe.batch_size",)
