"""Run reports: every metric plotted by prefix, the record as tables, PNGs that decode."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loops_runner import cli
from loops_runner.report import ReportError, write_report
from loops_runner.report import run_page as run_page_module
from loops_runner.report.charts import smooth
from tests.report.pages import (
    MAX_REPORT_BYTES,
    figures,
    json_block,
    plotly_js,
    table_rows,
    trace_names,
)
from tests.report.synthetic import START_WALL, write_dpo_run, write_rl_run, write_sft_run


def test_sft_run_report_plots_every_metric_and_tables_the_record(tmp_path: Path) -> None:
    run_dir = write_sft_run(tmp_path / "sft", steps=150)
    result = write_report([run_dir])
    assert result.kind == "run" and result.html == run_dir / "report.html"
    assert result.size_bytes < MAX_REPORT_BYTES
    page_html = result.html.read_text()
    shown = figures(result.html)
    # Losses share one chart (train first, sparse eval on top); the rest one chart each.
    loss = shown["plot-loss"]
    assert [trace["name"] for trace in loss["data"]] == [
        "train/loss", "train/loss (smoothed)", "eval/nll"]
    assert trace_names(loss) == ["train/loss", "eval/nll"]  # one legend entry per metric
    train, trend, evals = loss["data"]
    assert train["x"] == list(range(1, 151)) and len(train["y"]) == 150
    assert trend["x"] == train["x"] and trend["y"] == pytest.approx(smooth(train["y"]))
    assert evals["x"] == [0, 25, 50, 75, 100, 125, 150]
    assert set(shown) == {"plot-loss", "plot-train-tokens", "plot-optim-lr",
                          "plot-optim-grad_norm", "plot-time-step_s",
                          "plot-time-tokens_per_s"}
    # The wall-time view: seconds since the run's first line (0.5 s per step here).
    wall_button = loss["layout"]["updatemenus"][0]["buttons"][1]
    assert wall_button["label"] == "vs wall time"
    assert wall_button["args"][0]["x"][0][:2] == [0.5, 1.0]
    for section in ("Loss", "train", "optim", "time", "Tables"):
        assert f">{section}</a>" in page_html
    run_rows = dict(map(tuple, table_rows(page_html, "Run")))
    assert run_rows["run id"] == "run-0123456789abcdef"
    assert run_rows["status"] == "completed" and run_rows["base model"] == "tiny"
    assert [row[0] for row in table_rows(page_html, "Checkpoints")] == ["50", "100", "150"]
    assert ["torch", "2.13.0"] in table_rows(page_html, "Versions")
    assert ["model.rank", "8"] in table_rows(page_html, "Config (config.resolved.yaml)")
    samples = table_rows(page_html, "Final samples")
    assert samples[1] == ["Reverse <abc>", "cba", "cba</script>"]  # escaped, shown as text
    assert "cba&lt;/script&gt;" in page_html
    pngs = sorted(p.name for p in result.pngs)
    assert pngs == sorted(f"{key.removeprefix('plot-')}.png" for key in shown)
    for path in result.pngs:
        with Image.open(path) as image:
            image.load()
            assert image.format == "PNG" and image.size == (640, 360)


def test_smoothing_is_a_bias_corrected_moving_average() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0
    # (0.5 * 0 + 0.5 * 10) / (1 - 0.5 ** 2) = 5 / 0.75
    assert smooth([0.0, 10.0], weight=0.5) == pytest.approx([0.0, 5 / 0.75])
    noisy = [1.0 + (-1) ** i for i in range(100)]
    assert max(smooth(noisy)[50:]) - min(smooth(noisy)[50:]) < 0.25  # raw swings by 2


def test_page_is_self_contained(tmp_path: Path) -> None:
    from plotly.offline import get_plotlyjs

    result = write_report([write_sft_run(tmp_path / "sft", steps=20)])
    page_html = result.html.read_text()
    assert plotly_js(page_html) == get_plotlyjs()
    # Nothing is fetched: no external scripts, styles, images or fonts.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page_html)
    assert "@import" not in page_html and "url(http" not in page_html


def test_rl_report_draws_the_reward_band_and_browses_rollouts(tmp_path: Path) -> None:
    run_dir = write_rl_run(tmp_path / "rl", steps=40, groups=8, group_size=8)
    result = write_report([run_dir])
    assert result.size_bytes < MAX_REPORT_BYTES
    shown = figures(result.html)
    reward = shown["plot-rollout-reward_mean"]
    band, mean = reward["data"]
    assert band["fill"] == "toself" and mean["name"] == "rollout/reward_mean"
    # The band is mean +/- std (0.2): upper edge forward, lower edge back.
    assert band["y"][0] == pytest.approx(mean["y"][0] + 0.2)
    assert band["y"][-1] == pytest.approx(mean["y"][0] - 0.2)
    assert "plot-rollout-reward_std" not in shown  # drawn as the band
    for key in ("rollout-frac_mixed", "kl-sample_train", "kl-reference", "eval-accuracy"):
        assert f"plot-{key}" in shown
    rollouts = json_block(result.html.read_text(), "report-rollouts")["steps"]
    assert [entry["step"] for entry in rollouts] == list(range(1, 41))
    source = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    last = rollouts[-1]["groups"]
    assert len(last) == 8
    expected = [line for line in source if line["step"] == 40]
    for shown_group, line in zip(last, expected, strict=True):
        assert shown_group["completions"] == line["completions"]
        assert shown_group["rewards"] == line["rewards"]
        assert shown_group["advantages"] == line["advantages"]
        assert shown_group["policy_version"] == 39 and shown_group["prompt"] == line["prompt"]
    divergence = json_block(result.html.read_text(), "report-divergence")["steps"]
    source = [json.loads(line) for line in (run_dir / "divergence.jsonl").read_text().splitlines()]
    assert divergence == [{"step": line["step"], "tokens": line["tokens"]} for line in source]
    assert 'href="#s-divergence"' in result.html.read_text()


def test_large_rollouts_are_thinned_to_evenly_spaced_steps(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = write_rl_run(tmp_path / "rl", steps=40, groups=4, group_size=4)
    one_step = len(json.dumps({"step": 1, "groups": [
        {"group": 0, "policy_version": 0, "prompt": "What is 0 + 1?",
         "completions": ["answer 1"] * 4, "rewards": [1.0] * 4, "advantages": [0.0] * 4}] * 4}))
    monkeypatch.setattr(run_page_module, "ROLLOUTS_BUDGET_BYTES", one_step * 10)
    result = write_report([run_dir], pngs=False)
    page_html = result.html.read_text()
    steps = [entry["step"] for entry in json_block(page_html, "report-rollouts")["steps"]]
    assert steps[0] == 1 and steps[-1] == 40 and 2 < len(steps) <= 10
    assert f"showing {len(steps)} of 40 steps" in page_html
    assert result.pngs == []
    monkeypatch.setattr(run_page_module, "DIVERGENCE_BUDGET_BYTES", 2000)
    page_html = write_report([run_dir], pngs=False).html.read_text()
    steps = [entry["step"] for entry in json_block(page_html, "report-divergence")["steps"]]
    assert steps[0] == 1 and steps[-1] == 40 and 2 <= len(steps) < 40
    assert "divergence.jsonl has them all" in page_html


def test_dpo_metrics_get_their_own_section(tmp_path: Path) -> None:
    shown = figures(write_report([write_dpo_run(tmp_path / "dpo")]).html)
    assert {"plot-dpo-loss", "plot-dpo-accuracy", "plot-dpo-margin",
            "plot-eval-dpo-accuracy"} <= set(shown)
    assert "plot-loss" not in shown  # no train/eval loss logged


def test_killed_run_with_torn_line_and_no_record_still_gets_a_report(tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    lines = [{"step": 1, "train/loss": 3.0, "time/wall": START_WALL},
             {"step": 2, "train/loss": 2.5, "optim/lr": 1e-3, "time/wall": START_WALL + 1},
             {"step": 3, "train/loss": None, "eval/nll": 2.9, "time/wall": START_WALL + 2}]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 4, "train/lo')
    result = write_report([run_dir])
    page_html = result.html.read_text()
    assert "1 unreadable line(s) of metrics.jsonl skipped" in page_html
    assert "run.json is missing or unreadable" in page_html
    shown = figures(result.html)
    train, evals = shown["plot-loss"]["data"]
    assert train["x"] == [1, 2] and evals["x"] == [3]  # None values are gaps, not zeros
    assert shown["plot-optim-lr"]["data"][0]["x"] == [2]
    final = dict(map(tuple, table_rows(page_html, "Final metrics (last logged values)")))
    assert final == {"eval/nll": "2.9", "optim/lr": "0.001", "steps": "3", "train/loss": "2.5"}


def test_running_run_is_reported_with_its_status(tmp_path: Path) -> None:
    run_dir = write_sft_run(tmp_path / "running", steps=30, status="running")
    page_html = write_report([run_dir], pngs=False).html.read_text()
    assert "status is &#x27;running&#x27;: this report shows what it has so far" in page_html


def test_a_directory_without_a_run_is_refused_and_left_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    with pytest.raises(ReportError, match=r"no run in .*empty: a run dir holds run.json or "
                                          r"metrics.jsonl, a sweep dir holds sweep.jsonl"):
        write_report([empty])
    assert [p.name for p in empty.iterdir()] == ["notes"]
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err


def test_a_users_own_report_html_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = write_sft_run(tmp_path / "sft", steps=10)
    (run_dir / "report.html").write_text("<html>my notes</html>")
    with pytest.raises(ReportError, match="was not written by loops-runner report"):
        write_report([run_dir])
    assert (run_dir / "report.html").read_text() == "<html>my notes</html>"
    # Its own earlier report is replaced, and PNGs of metrics it no longer has are dropped.
    (run_dir / "report.html").unlink()
    write_report([run_dir], pngs=False)
    (run_dir / "report_plots").mkdir()
    (run_dir / "report_plots" / "train-gone.png").write_bytes(b"old")
    result = write_report([run_dir])
    assert not (run_dir / "report_plots" / "train-gone.png").exists()
    assert len(result.pngs) == len(list((run_dir / "report_plots").iterdir()))


def test_report_imports_stay_lazy() -> None:
    probe = ("import sys, loops_runner.report, loops_runner.cli, loops_runner.runner.app\n"
             "print(sorted(m for m in ('plotly', 'matplotlib', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_turning_the_report_off_does_not_block_a_resume() -> None:
    from loops_runner.runner.run_record import config_hash

    assert config_hash({"seed": 0, "report": True}) == config_hash({"seed": 0, "report": False})



def test_a_metric_and_its_parts_share_one_chart(tmp_path: Path) -> None:
    """``eval/accuracy`` with ``eval/accuracy/<family>``: one chart, a curve per family."""
    run_dir = write_sft_run(tmp_path / "sft", steps=50)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if "eval/nll" in line:
            line.update({"eval/accuracy": 0.4, "eval/accuracy/capitals": 0.1,
                         "eval/accuracy/reverse": 0.7, "eval/other/part": 1.0})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    shown = figures(write_report([run_dir]).html)
    assert trace_names(shown["plot-eval-accuracy"]) == [
        "eval/accuracy", "eval/accuracy/capitals", "eval/accuracy/reverse"]
    assert "plot-eval-accuracy-capitals" not in shown
    # A name with a slash but no parent metric logged stays a chart of its own.
    assert trace_names(shown["plot-eval-other-part"]) == ["eval/other/part"]
