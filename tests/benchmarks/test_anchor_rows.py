"""The TRL anchor rows: speed ratios, learning gaps and the RL limit from measured runs.

The runs themselves take minutes (``python -m benchmarks --only anchors``); here the
arithmetic that turns them into rows is checked on given figures.
"""

from __future__ import annotations

import pytest

from benchmarks.measures.anchors import Run, Sizes, late_mean, rows


def test_late_mean_averages_the_last_half_of_the_steps() -> None:
    assert late_mean([9.0, 9.0, 1.0, 3.0]) == 2.0
    assert late_mean([5.0]) == 5.0


def test_rows_give_trl_over_ours_speed_learning_gaps_and_the_limit() -> None:
    def runs(step_s: list[float], learning: float, **extra: float) -> list[Run]:
        return [Run(s, learning, dict(extra)) for s in step_s]

    measured = {
        "sft ours": runs([0.10, 0.12], 0.50), "sft trl": runs([0.20, 0.18], 0.55),
        "grpo sync": runs([0.30, 0.30], 0.30, **{"time/sample_s": 0.1, "time/train_s": 0.15}),
        "grpo off-policy": runs([0.20, 0.25], 0.10),
        "grpo trl": runs([0.60, 0.60], 0.31),
        "dpo ours": runs([0.5, 0.5], 0.9), "dpo trl": runs([0.6, 0.6], 0.9),
        "rl limit": [Run(0.2, 0.0, {"sample_s": 0.2, "train_s": 0.1}),
                     Run(0.2, 0.0, {"sample_s": 0.15, "train_s": 0.2})],
    }
    out = {r.measure: r for r in rows(measured, Sizes(30, 12, 20, 2), None)}
    sft = out["anchors[sft]"]
    assert sft.rounds == [2.0, 1.5] and sft.value == pytest.approx(1.75) and sft.passed
    sft_learning = out["learning[sft]"]  # our loss 0.05 lower: passes
    assert sft_learning.value == pytest.approx(0.05) and sft_learning.passed
    sync, off = out["anchors[grpo sync]"], out["anchors[grpo off-policy]"]
    assert sync.value == pytest.approx(2.0) and sync.passed
    assert off.value == pytest.approx(2.7) and not off.passed
    off_learning = out["learning[grpo off-policy]"]
    assert off_learning.value == pytest.approx(-0.21) and not off_learning.passed  # learns less
    dpo = out["anchors[dpo]"]
    assert dpo.value == pytest.approx(1.2) and not dpo.passed
    limit = out["anchors[rl limit]"]
    assert limit.direction == "at_most" and limit.value == pytest.approx(1.125) and limit.passed
    assert "sample 0.100 + train 0.150" in limit.note
    assert "30 steps" in sft.note and "LoRA r=16" in sft.note


def test_grouped_rounds_run_each_group_back_to_back_rotating_its_order() -> None:
    from benchmarks.measures.anchors import grouped_rounds

    calls: list[str] = []

    def side(name: str):  # type: ignore[no-untyped-def]
        def run() -> Run:
            calls.append(name)
            return Run(float(len(calls)), 0.0, {})
        return run

    sides = {name: side(name) for name in ("a1", "a2", "b1", "b2", "b3")}
    runs = grouped_rounds(2, sides, (("a1", "a2"), ("b1", "b2", "b3")))
    assert calls == ["a1", "a2", "b1", "b2", "b3", "a2", "a1", "b2", "b3", "b1"]
    assert [r.step_s for r in runs["a1"]] == [1.0, 7.0]
