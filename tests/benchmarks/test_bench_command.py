"""``python -m benchmarks``: the command end to end (cheapest measure) and its table logic.

No timing assertions: figures depend on the machine; only the shape is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import __main__ as command
from benchmarks.suite import BenchContext, Result, Skipped
from benchmarks.table import Failure, Row, Skip, document, render, status

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_op_overhead_writes_json_and_prints_the_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "op_overhead",
         "--rounds", "1", "--json", str(out), "--home", str(tmp_path / "home")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table_lines = [line for line in done.stdout.splitlines() if line.startswith("op_overhead ")]
    assert len(table_lines) == 1, done.stdout
    assert "over up to 1 rounds" in done.stdout

    doc = json.loads(out.read_text())
    assert set(doc) >= {"machine", "quick", "rounds", "results", "seconds_per_module"}
    assert doc["quick"] is True and doc["rounds"] == 1
    assert set(doc["machine"]) >= {"cpu_model", "cpu_count", "torch_version", "torch_threads",
                                   "date"}
    rows = {row["measure"]: row for row in doc["results"]}
    row = rows["op_overhead"]
    assert set(row) >= {"ours", "anchor", "unit", "value", "goal", "direction", "rounds",
                        "note", "passed", "status"}
    assert row["unit"] == "ms" and row["direction"] == "at_most" and len(row["rounds"]) == 1
    assert row["status"] in ("pass", "fail") and row["passed"] == (row["status"] == "pass")
    assert row["ours"] > 0 and row["anchor"] > 0


def result(value: float, goal: float | None, direction: str) -> Result:
    return Result(measure="m", ours=value, anchor=1.0, unit="x", value=value, goal=goal,
                  direction=direction, rounds=[value, value])  # type: ignore[arg-type]


def test_status_follows_the_goal_and_its_direction() -> None:
    assert status(result(1.0, 0.95, "at_least")) == "pass"
    assert status(result(0.9, 0.95, "at_least")) == "fail"
    assert status(result(1.3, 1.2, "at_most")) == "fail"
    assert status(result(1.2, 1.2, "at_most")) == "pass"
    assert status(result(7.0, None, "report")) == "report"
    assert status(Failure("broken", "Traceback ...\nValueError: boom")) == "error"


def test_render_shows_every_row_goal_and_error_and_counts() -> None:
    rows = [result(1.02, 0.95, "at_least"), result(1.5, 1.2, "at_most"),
            Failure("broken", "Traceback (most recent call last):\nValueError: boom")]
    text = render(rows, rounds=3, quick=True)
    lines = text.splitlines()
    assert "medians over up to 3 rounds" in lines[0]
    body = [line for line in lines if line.startswith(("m ", "broken "))]
    assert len(body) == 3
    assert ">= 0.95" in body[0] and body[0].split()[-2:] == ["pass", "2"]
    assert "<= 1.2" in body[1] and " fail " in body[1]
    assert "ValueError: boom" in body[2] and " error " in body[2]
    assert lines[-1] == "1 pass, 1 fail, 0 report, 0 skip, 1 error"
    doc = document(rows, machine={}, quick=True, rounds=3, seconds={})
    assert [r["status"] for r in doc["results"]] == ["pass", "fail", "error"]
    json.dumps(doc)  # serialisable as is


def test_discovery_keeps_the_preferred_order_and_appends_unknown_modules() -> None:
    names = command.discover()
    known = [n for n in command.PREFERRED_ORDER if n in names]
    assert names[: len(known)] == known
    assert set(names) >= {"op_overhead", "training_throughput", "variable_lengths", "memory"}
    assert command.select(names, "mfu") == ["training_throughput"]


def run_with(monkeypatch, importer: Callable[[str], object], *, quick: bool,  # type: ignore[no-untyped-def]
             name: str) -> Row:
    """``run_measure`` of ``name`` with ``importer`` standing in for the module import."""
    monkeypatch.setattr(command.importlib, "import_module", importer)
    ctx = BenchContext(quick=quick, home=Path("."), work=Path("."), rounds=1, threads=None)
    (row,) = command.run_measure(name, ctx)
    return row


def test_a_raising_measure_becomes_an_error_row(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def boom(name: str) -> object:
        raise RuntimeError(f"cannot import {name}")

    row = run_with(monkeypatch, boom, quick=True, name="whatever")
    assert isinstance(row, Failure) and "cannot import" in row.error


def test_a_skipped_measure_is_one_skip_row_with_its_reason(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    class Absent:
        @staticmethod
        def run(ctx: BenchContext) -> list[Result]:
            raise Skipped("trl is not installed: pip install -e '.[anchors]'")

    row = run_with(monkeypatch, lambda name: Absent, quick=False, name="anchors")
    assert isinstance(row, Skip) and status(row) == "skip"
    text = render([row, result(1.0, 0.95, "at_least")], rounds=1, quick=False)
    assert "anchors: trl is not installed: pip install -e '.[anchors]'" in text
    assert text.splitlines()[-1] == "1 pass, 0 fail, 0 report, 1 skip, 0 error"
    entry = document([row], machine={}, quick=False, rounds=1, seconds={})["results"][0]
    assert entry["status"] == "skip" and entry["passed"] is None


def test_quick_leaves_the_long_measures_out_unless_named(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def must_not_import(name: str) -> object:
        raise AssertionError(f"{name} imported under --quick")

    row = run_with(monkeypatch, must_not_import, quick=True, name="anchors")
    assert isinstance(row, Skip) and "--quick --only anchors" in row.reason
    assert command.select(command.discover(), "learning") == ["anchors"]
