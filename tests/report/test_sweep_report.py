"""Sweep reports: curves overlaid per metric, a sortable table, the objective per parameter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loops_runner import cli
from loops_runner.report import write_report
from tests.report.pages import MAX_REPORT_BYTES, figures, table_rows, trace_names
from tests.report.synthetic import write_dpo_run, write_sft_run, write_sweep

LABELS = ["learning_rate=0.001 rank=4", "learning_rate=0.001 rank=16",
          "learning_rate=0.003 rank=4", "learning_rate=0.003 rank=16"]


def test_sweep_report_overlays_jobs_and_plots_the_objective(tmp_path: Path) -> None:
    sweep_dir = write_sweep(tmp_path / "sweep", steps=150)
    first_job = sweep_dir / "recipe.learning_rate=0.001,model.rank=4"
    write_report([first_job], pngs=False)  # as the run itself does at its end
    result = write_report([sweep_dir])
    assert result.kind == "sweep" and result.html == sweep_dir / "report.html"
    assert result.size_bytes < MAX_REPORT_BYTES
    shown = figures(result.html)
    assert trace_names(shown["plot-train-loss"]) == LABELS
    assert trace_names(shown["plot-eval-nll"]) == LABELS
    assert all(len(trace["x"]) == 150 for trace in shown["plot-train-loss"]["data"])
    finals = {json.loads(line)["overrides"][1] + " " + json.loads(line)["overrides"][2]:
              json.loads(line)["final_metrics"]["eval/nll"]
              for line in (sweep_dir / "sweep.jsonl").read_text().splitlines()}
    by_rate = shown["plot-objective-vs-recipe.learning_rate"]
    assert by_rate["layout"]["xaxis"]["title"]["text"] == "recipe.learning_rate"
    points = {trace["name"]: (trace["x"][0], trace["y"][0]) for trace in by_rate["data"]}
    assert points["learning_rate=0.003 rank=16"] == (
        0.003, pytest.approx(finals["recipe.learning_rate=0.003 model.rank=16"]))
    by_rank = shown["plot-objective-vs-model.rank"]
    assert sorted(t["x"][0] for t in by_rank["data"]) == [4.0, 4.0, 16.0, 16.0]
    page_html = result.html.read_text()
    assert "objective eval/nll" in page_html
    assert '<table class="sortable">' in page_html
    rows = table_rows(page_html, "Jobs and final metrics (click a column to sort)")
    assert [row[:5] for row in rows] == [
        ["0", "recipe.learning_rate=0.001,model.rank=4", "completed", "0.001", "4"],
        ["1", "recipe.learning_rate=0.001,model.rank=16", "completed", "0.001", "16"],
        ["2", "recipe.learning_rate=0.003,model.rank=4", "completed", "0.003", "4"],
        ["3", "recipe.learning_rate=0.003,model.rank=16", "completed", "0.003", "16"]]
    header = page_html.split('<table class="sortable">')[1].split("</thead>")[0]
    assert "<th>eval/nll</th>" in header  # the objective, first of the metrics
    # A job that has its own report is linked to it, relative to the sweep's page.
    assert '<a href="recipe.learning_rate=0.001,model.rank=4/report.html">' in page_html
    assert len(result.pngs) == len(shown)


def test_sweep_still_running_shows_unfinished_jobs(tmp_path: Path) -> None:
    sweep_dir = write_sweep(tmp_path / "sweep", steps=20)
    lines = (sweep_dir / "sweep.jsonl").read_text().splitlines()
    (sweep_dir / "sweep.jsonl").write_text("\n".join(lines[:3]) + "\n")
    running = sweep_dir / "recipe.learning_rate=0.003,model.rank=16"
    record = json.loads((running / "run.json").read_text())
    record.update(status="running", final_metrics={})
    (running / "run.json").write_text(json.dumps(record))
    page_html = write_report([sweep_dir], pngs=False).html.read_text()
    rows = table_rows(page_html, "Jobs and final metrics (click a column to sort)")
    assert [row[2] for row in rows] == ["completed"] * 3 + ["running (partial)"]
    assert rows[3][0] == "-"  # not numbered by Hydra yet


def test_several_run_dirs_are_compared_into_out(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    first = write_sft_run(tmp_path / "a", steps=20)
    second = write_dpo_run(tmp_path / "b")
    assert cli.main(["report", str(first), str(second)]) == 2
    assert "pass --out DIR" in capsys.readouterr().err
    out = tmp_path / "compare"
    assert cli.main(["report", str(first), str(second), "--out", str(out)]) == 0
    assert "runs report" in capsys.readouterr().out
    shown = figures(out / "report.html")
    # Each run shows the metrics it has; a metric only one run logged has one curve.
    assert trace_names(shown["plot-train-loss"]) == ["a"]
    assert trace_names(shown["plot-dpo-accuracy"]) == ["b"]
    assert (out / "report_plots" / "dpo-accuracy.png").is_file()
    assert not (first / "report.html").exists()
