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


def test_every_benchmark_module_imports() -> None:
    """The suite's measures and the learning checks import as package modules (no
    script-style sys.path imports left), so ``python -m`` runs each as documented."""
    import importlib
    import pkgutil

    from benchmarks import learning, measures

    names = [f"{package.__name__}.{info.name}" for package in (measures, learning)
             for info in pkgutil.iter_modules(package.__path__)]
    assert {"benchmarks.learning.rl", "benchmarks.measures.soak",
            "benchmarks.measures.report_build"} <= set(names)
    for name in names:
        module = importlib.import_module(name)
        public = name.rsplit(".", 1)[-1]
        if name.startswith("benchmarks.measures.") and not public.startswith("_"):
            assert callable(getattr(module, "run", None)), f"{name} has no run(ctx)"
        if name.startswith("benchmarks.learning."):
            assert callable(getattr(module, "main", None)), f"{name} has no main()"


@pytest.mark.timeout(180)
def test_report_build_quick_rows_time_and_size_three_reports(tmp_path: Path) -> None:
    from benchmarks.measures import report_build

    ctx = BenchContext(quick=True, home=tmp_path / "home", work=tmp_path, rounds=1,
                       threads=1)

    results = report_build.run(ctx)

    assert [r.measure.split("[")[0] for r in results] == ["report_build", "report_size"] * 3
    for result in results:
        assert result.anchor is None and result.direction == "at_most"
        assert math.isfinite(result.value) and result.value > 0
    assert {r.unit for r in results} == {"CPU s", "MB"}
    assert all((tmp_path / "report_build" / run / "report.html").is_file()
               for run in ("sft", "sweep", "rl"))
