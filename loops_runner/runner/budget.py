"""The run's limits (a step cap and a wall-clock budget), held for every recipe.

A recipe written on :class:`~loops_runner.runner.loop.TrainingLoop` stops at a
drained step by itself. A recipe that never looks at the budget (a bare step
loop) is stopped by :class:`BudgetGuard`: the runner hands recipes a training
client that sees every call, so when the budget has passed, the first training
call of the next step saves a resumable checkpoint and raises
:class:`BudgetReached`, which the runner turns into a clean stop (exit 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Budget:
    """Limits a recipe must respect: a step cap and a wall-clock budget."""

    max_steps: int | None = None
    time_budget_s: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    def steps(self, recipe_steps: int) -> int:
        """The number of steps to run: the recipe's own, capped by the global max_steps."""
        return min(recipe_steps, self.max_steps) if self.max_steps else recipe_steps

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def time_exhausted(self) -> bool:
        return self.time_budget_s is not None and self.elapsed_s() >= self.time_budget_s


class BudgetReached(BaseException):
    """The time budget ended the run at ``step`` (a checkpoint of that step exists).

    A BaseException, like KeyboardInterrupt: a recipe's ``except Exception``
    must not swallow the runner's stop.
    """

    def __init__(self, step: int) -> None:
        super().__init__(f"time budget reached at step {step}")
        self.step = step


# Calls that start work on the next optimizer step: the step boundary is the first of
# them after an optim_step.
_STEP_CALLS = ("forward_backward", "forward_backward_custom", "forward_backward_async",
               "forward_backward_custom_async")


@dataclass
class BudgetGuard:
    """A training client that stops a bare recipe at the step boundary after the budget.

    Everything passes through to the real client. It counts ``optim_step``
    calls (the runner's step is the optimizer step, as in ``ctx.log(step, ...)``
    and ``ctx.checkpointer.save(step)``) and, once the budget has passed and
    at least one step of this attempt is done, the next step's first call
    waits for the last update, calls ``stop(step)`` (which checkpoints) and
    raises :class:`BudgetReached`. While ``owned()`` is true (a
    :class:`TrainingLoop` is running) the loop stops the run instead.
    """

    # Private names: every other attribute is the wrapped client's.
    _inner: Any
    _budget: Budget
    _steps: int  # optimizer steps done: the resume's start, then one per optim_step
    _stop: Callable[[int], None]
    _owned: Callable[[], bool]
    _last_update: Any = None

    def __post_init__(self) -> None:
        self._start_step = self._steps

    def __getattr__(self, name: str) -> Any:
        # Only names the dataclass does not hold reach here: the client's own.
        if "_inner" not in self.__dict__:  # not built yet (copy, pickle)
            raise AttributeError(name)
        attribute = getattr(self.__dict__["_inner"], name)
        if name in _STEP_CALLS:
            self._at_step_boundary()
        return attribute

    def optim_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted(self._inner.optim_step(*args, **kwargs))

    async def optim_step_async(self, *args: Any, **kwargs: Any) -> Any:
        return self._counted(await self._inner.optim_step_async(*args, **kwargs))

    def _counted(self, update: Any) -> Any:
        self._steps += 1
        self._last_update = update
        return update

    def _at_step_boundary(self) -> None:
        if (self._budget.time_budget_s is None or self._owned()
                or self._steps <= self._start_step or not self._budget.time_exhausted()):
            return
        if self._last_update is not None:
            self._last_update.result()  # the checkpoint must hold this step's update
        self._stop(self._steps)
        raise BudgetReached(self._steps)
