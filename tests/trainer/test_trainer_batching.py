"""Micro-batch planning (pure, no server)."""

from __future__ import annotations

import random

import pytest

from loops_runner.servers.trainer.batching import default_token_budget, plan_micro_batches


def _check_partition(plan, n: int) -> None:  # type: ignore[no-untyped-def]
    indices = [i for micro in plan for i in micro.indices]
    assert sorted(indices) == list(range(n))


def test_grouping_cuts_padding_and_respects_the_budget() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(16, 256) for _ in range(64)]
    plan = plan_micro_batches(lengths, 4096)
    _check_partition(plan, len(lengths))
    for micro in plan:
        assert micro.max_len == max(lengths[i] for i in micro.indices)
        assert micro.padded_tokens <= 4096
    padded = sum(m.padded_tokens for m in plan)
    single = plan_micro_batches(lengths, 4096, strategy="single")
    assert len(single) == 1 and single[0].padded_tokens == 64 * max(lengths)
    assert padded < 1.15 * sum(lengths) < single[0].padded_tokens


def test_a_unit_over_the_budget_runs_alone() -> None:
    plan = plan_micro_batches([3000, 10, 12], 100)
    assert plan[0].indices == (0,) and plan[0].max_len == 3000
    _check_partition(plan, 3)


def test_dpo_pairs_stay_together_and_adjacent() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(5, 300) for _ in range(40)]
    plan = plan_micro_batches(lengths, 1024, unit_size=2)
    _check_partition(plan, len(lengths))
    for micro in plan:
        pairs = list(zip(micro.indices[0::2], micro.indices[1::2], strict=True))
        assert all(a % 2 == 0 and b == a + 1 for a, b in pairs)
    with pytest.raises(ValueError, match="units of 2"):
        plan_micro_batches([1, 2, 3], 100, unit_size=2)


def test_plans_are_deterministic_and_overhead_merges_small_batches() -> None:
    lengths = [50, 40, 30, 20, 10] * 4
    assert plan_micro_batches(lengths, 10_000) == plan_micro_batches(lengths, 10_000)
    fine = plan_micro_batches(lengths, 10_000, batch_overhead_tokens=0)
    coarse = plan_micro_batches(lengths, 10_000, batch_overhead_tokens=100_000)
    assert len(coarse) == 1 < len(fine)
    assert plan_micro_batches([], 100) == []


def test_default_budget_scales_with_vocabulary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOPS_TRAINER_TOKEN_BUDGET", raising=False)
    assert default_token_budget(4096) == 16384
    assert default_token_budget(151_936) == 2048  # big vocabularies: fewer tokens per batch
    monkeypatch.setenv("LOOPS_TRAINER_TOKEN_BUDGET", "512")
    assert default_token_budget(4096) == 512
