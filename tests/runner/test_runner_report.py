"""Reports of real runs: an sft run through ``loops-runner report``, a failed run by itself.

(That a run writes its own report at the end, and a sweep its sweep report, is
checked in test_runner_e2e.py's multirun test, which leaves both anyway.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.report.pages import figures, table_rows, trace_names
from tests.runner.conftest import run_runner, runner_env, write_user_recipe

QUICK = ["recipe.dataset.num_examples=200", "recipe.batch_size=8", "recipe.eval_every=2",
         "recipe.dataset.eval_examples=8", "recipe.num_final_samples=2", "recipe.save_every=0",
         "recipe.evaluators.0.num_prompts=14"]


def test_cli_reports_a_real_sft_run(tmp_path: Path, runner_home: Path) -> None:
    result = run_runner("+recipe=sft", "recipe.max_steps=4", *QUICK, "report=false",
                        "hydra.run.dir=run", cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "run"
    report = run_dir / "report.html"
    assert not report.exists()  # report=false
    built = subprocess.run([sys.executable, "-m", "loops_runner.cli", "report", "run"],
                           cwd=tmp_path, env=runner_env(runner_home), capture_output=True,
                           text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    assert f"{report} (run report" in built.stdout
    shown = figures(report)
    assert trace_names(shown["plot-loss"]) == ["train/loss", "eval/nll"]
    train, evals = shown["plot-loss"]["data"]
    assert train["x"] == [1, 2, 3, 4] and evals["x"] == [0, 2, 4]
    for key in ("optim-lr", "time-tokens_per_s", "train-tokens"):
        assert f"plot-{key}" in shown
    page_html = report.read_text()
    assert len(table_rows(page_html, "Final samples")) == 2
    run_rows = dict(map(tuple, table_rows(page_html, "Run")))
    assert run_rows["status"] == "completed" and run_rows["run id"].startswith("run-")
    pngs = sorted((run_dir / "report_plots").glob("*.png"))
    assert len(pngs) == len(shown)
    for path in pngs:
        with Image.open(path) as image:
            image.load()


def test_a_failed_run_still_writes_its_report(tmp_path: Path, runner_home: Path) -> None:
    write_user_recipe(tmp_path, "fails", (
        "def run(ctx, cfg):\n"
        "    ctx.log(1, {'train/loss': 2.0})\n"
        "    ctx.log(2, {'train/loss': 1.5})\n"
        "    raise RuntimeError('boom at step 2')\n"), "")
    result = run_runner("--config-dir", "configs", "+recipe=fails", "hydra.run.dir=failed",
                        cwd=tmp_path, home=runner_home)
    assert result.returncode != 0
    report = tmp_path / "failed" / "report.html"
    page_html = report.read_text()
    run_rows = dict(map(tuple, table_rows(page_html, "Run")))
    assert run_rows["status"] == "failed" and "boom at step 2" in run_rows["error"]
    assert "status is &#x27;failed&#x27;" in page_html
    assert figures(report)["plot-loss"]["data"][0]["x"] == [1, 2]

