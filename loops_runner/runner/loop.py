"""The cadence every training recipe shares, so a recipe holds only its math.

A recipe asks the context for a loop and reads top to bottom::

    loop = ctx.loop(steps, eval_every=cfg.eval_every, save_every=cfg.save_every, ahead=2)
    if loop.fresh:                       # step 0: the "before" of every comparison
        loop.log(0, await evaluate(...))
    for step in loop:                    # 0-based; starts where a resumed run left off
        work = submit_step(step)         # e.g. forward_backward + optim_step futures
        for done in loop.submit(step, work):   # steps whose results are due, in order
            metrics = await metrics_of(done.work)
            if done.evaluates:
                metrics |= await evaluate(...)
            loop.log(done.step, metrics)  # metrics.jsonl, W&B, progress; checkpoint at cadence
    return loop.final()

What the loop owns: the progress bar, the resume start, the submit-ahead queue
(at most ``ahead`` steps in flight, drained before every eval and checkpoint so
they see exactly that step's weights), checkpoints every ``save_every`` steps
and at the end, the time budget (stop at a drained step with a resumable
checkpoint), ``time/step_s`` and the final metrics.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from loops_runner.runner.context import RunContext

W = TypeVar("W")

# What every recipe logs of an optimizer step, under optim/<name>.
OPTIM_METRICS = ("grad_norm", "grad_norm_clipped", "update_norm")


def optimizer_metrics(result: Any, learning_rate: float) -> dict[str, float]:
    """``optim/lr`` and the trainer's norms of one ``optim_step`` result."""
    reported = getattr(result, "metrics", None) or {}
    return {"optim/lr": learning_rate,
            **{f"optim/{k}": float(reported[k]) for k in OPTIM_METRICS if k in reported}}


@dataclass(frozen=True)
class Cadence:
    """When a run evaluates and checkpoints (always after its last step)."""

    steps: int
    eval_every: int = 0
    save_every: int = 0

    def evaluates(self, step: int) -> bool:
        return step == self.steps or bool(self.eval_every and step % self.eval_every == 0)

    def saves(self, step: int) -> bool:
        return step == self.steps or bool(self.save_every and step % self.save_every == 0)

    def save_steps(self) -> list[int]:
        return [s for s in range(1, self.steps + 1) if self.saves(s)]


@dataclass
class Finished(Generic[W]):
    """A step whose results are due: its 1-based number and what the recipe submitted."""

    step: int
    work: W
    evaluates: bool


@dataclass
class TrainingLoop(Generic[W]):
    _ctx: RunContext
    cadence: Cadence
    ahead: int = 0  # steps in flight beyond the one just submitted
    _queue: deque[tuple[int, W]] = field(default_factory=deque, init=False)
    _last_logged_at: float = field(default_factory=time.monotonic, init=False)
    step: int = field(init=False)  # optimizer steps done and logged
    last: dict[str, Any] = field(init=False)  # the last value of every metric logged
    stopped_early: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.step = self._ctx.start_step
        self.last = dict(self._ctx.logged)  # a resumed run's metrics so far

    @property
    def steps(self) -> int:
        return self.cadence.steps

    @property
    def fresh(self) -> bool:
        """True before the first step of a fresh run (not a resume): log step 0 then."""
        return self._ctx.start_step == 0

    @property
    def completed(self) -> bool:
        return self.step >= self.steps

    def __iter__(self) -> Iterator[int]:
        ctx = self._ctx
        ctx.metrics.start_progress(self.steps, completed=ctx.start_step)
        ctx.loop_running = True
        try:
            step = ctx.start_step
            while step < self.steps:
                # At least one step per attempt, so a resume always makes progress.
                if step > ctx.start_step and not self._queue and ctx.budget.time_exhausted():
                    self.stopped_early = True
                    ctx.stop_for_budget(self.step)
                    return
                yield step
                step += 1
        finally:
            ctx.loop_running = False
            ctx.metrics.stop_progress()

    def submit(self, step: int, work: W) -> list[Finished[W]]:
        """Queue the 0-based ``step``'s work; return the steps whose results are due.

        Everything in flight is due before an eval or checkpoint step and once
        the time budget has passed; otherwise at most ``ahead`` steps stay queued.
        """
        number = step + 1
        self._queue.append((number, work))
        cadence = self.cadence
        drain = (cadence.evaluates(number) or cadence.saves(number)
                 or self._ctx.budget.time_exhausted())
        due = []
        while self._queue and (drain or len(self._queue) > self.ahead):
            done, item = self._queue.popleft()
            due.append(Finished(done, item, cadence.evaluates(done)))
        return due

    def log(self, step: int, metrics: dict[str, Any], *, tokens: int | None = None
            ) -> dict[str, Any]:
        """Log step ``step``'s metrics (with ``time/step_s``, and ``time/tokens_per_s`` when
        ``tokens`` says how many it trained on); checkpoint at the cadence."""
        if step > 0:
            now = time.monotonic()
            seconds = max(now - self._last_logged_at, 1e-9)
            metrics = {**metrics, "time/step_s": seconds}
            if tokens is not None:
                metrics["time/tokens_per_s"] = tokens / seconds
            self._last_logged_at = now
            self.step = step
        self._ctx.log(step, metrics)
        self.last.update(metrics)
        if step > 0 and self.cadence.saves(step):
            self._ctx.checkpointer.save(step)
        return metrics

    def final(self, **extra: Any) -> dict[str, Any]:
        """The last value of every metric (no timings), the steps done and ``extra``."""
        final = {k: v for k, v in self.last.items() if not k.startswith("time/")}
        return {**final, "steps": self.step, **extra}
