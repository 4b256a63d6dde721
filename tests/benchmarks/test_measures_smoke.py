"""The cheapest sampler measure runs end to end with a quick context and returns sane rows.

No timing is asserted (this machine's load decides those); only that the
measure starts its real sampler, measures both sides and fills every field.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.measures import group_sampling
from benchmarks.suite import BenchContext


@pytest.mark.timeout(180)
def test_group_sampling_quick_results_are_sane(loops_home: Path, tiny_model_dir: Path,
                                               tmp_path: Path) -> None:
    ctx = BenchContext(quick=True, home=loops_home, work=tmp_path, rounds=1, threads=1)

    results = group_sampling.run(ctx)

    assert len(results) == 1
    result = results[0]
    assert result.measure == "group_sampling"
    assert result.anchor is not None and result.goal is not None
    assert result.direction == "at_least" and result.unit == "tok/s"
    assert len(result.rounds) == ctx.rounds
    for figure in (result.ours, result.anchor, result.value, *result.rounds):
        assert math.isfinite(figure) and figure > 0
    assert result.passed in (True, False)
    assert result.as_json()["passed"] == result.passed
