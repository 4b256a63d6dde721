"""The loop's cadence, queue and retention choices, and the end-of-run summary, as pure logic."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from loops_runner.runner.budget import Budget
from loops_runner.runner.loop import Cadence, TrainingLoop, optimizer_metrics
from loops_runner.runner.retention import beyond_last
from loops_runner.runner.run_record import CheckpointRecord
from loops_runner.runner.summary import headline_changes


def test_cadence_evaluates_and_saves_at_its_multiples_and_the_last_step() -> None:
    cadence = Cadence(steps=10, eval_every=4, save_every=3)
    assert [s for s in range(1, 11) if cadence.evaluates(s)] == [4, 8, 10]
    assert cadence.save_steps() == [3, 6, 9, 10]
    assert Cadence(steps=5).save_steps() == [5]


def _loop(steps: int, *, ahead: int, eval_every: int = 0, save_every: int = 0,
          budget: Budget | None = None) -> TrainingLoop:
    ctx = SimpleNamespace(start_step=0, logged={}, budget=budget or Budget())
    return TrainingLoop(ctx, Cadence(steps, eval_every, save_every), ahead)  # type: ignore[arg-type]


def test_submit_keeps_ahead_steps_in_flight_and_drains_before_an_eval() -> None:
    loop = _loop(6, ahead=2, eval_every=4)
    due = [[d.step for d in loop.submit(step, f"work-{step}")] for step in range(6)]
    # Steps 1-2 wait; step 3 releases step 1; step 4 evaluates: everything is due.
    assert due == [[], [], [1], [2, 3, 4], [], [5, 6]]
    assert _loop(6, ahead=0).submit(0, "x")[0].work == "x"  # what was submitted comes back


def test_submit_drains_everything_once_the_time_budget_has_passed() -> None:
    loop = _loop(100, ahead=3, budget=Budget(time_budget_s=1e-9))
    assert [d.step for d in loop.submit(0, None)] == [1]


def test_optimizer_metrics_are_the_same_names_for_every_recipe() -> None:
    result = SimpleNamespace(metrics={"grad_norm": 2.0, "update_norm": 0.1, "other": 5.0})
    assert optimizer_metrics(result, 0.01) == {"optim/lr": 0.01, "optim/grad_norm": 2.0,
                                               "optim/update_norm": 0.1}


def test_retention_lets_old_checkpoints_go_but_never_the_newest_or_the_init_source() -> None:
    records = [CheckpointRecord(step=s, path=f"bt://loops:r/weights/step-{s:06d}")
               for s in (2, 4, 6, 8)]
    assert [c.step for c in beyond_last(records, 2, set())] == [2, 4]
    assert [c.step for c in beyond_last(records, 2, {records[0].path})] == [4]
    assert beyond_last(records, None, set()) == []
    assert beyond_last(records[:1], 1, set()) == []


def test_headline_changes_compare_first_and_last_values(tmp_path: Path) -> None:
    lines = [{"step": 0, "eval/accuracy": 0.3, "eval/accuracy/addition": 0.1},
             {"step": 1, "train/loss": 2.0, "rollout/reward_mean": 0.1},
             {"step": 2, "train/loss": 1.5, "rollout/reward_mean": 0.3},
             {"step": 3, "train/loss": 1.0, "rollout/reward_mean": 0.5},
             {"step": 4, "train/loss": 0.5, "rollout/reward_mean": 0.7, "eval/accuracy": 0.6,
              "eval/accuracy/addition": 0.4}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    changes = {name: (round(a, 6), round(b, 6)) for name, a, b in headline_changes(path)}
    # Per-family breakdowns stay out; the reward is averaged over the first / last steps.
    assert changes == {"eval/accuracy": (0.3, 0.6), "train/loss": (2.0, 0.5),
                       "rollout/reward_mean": (0.2, 0.6)}
