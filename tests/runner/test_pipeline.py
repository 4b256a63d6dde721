"""Pipelines through the real CLI: stages in order, init_from chained, kill and re-run."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.runner.conftest import run_runner, runner_command, runner_env

STAGE_QUICK = ("'recipe.dataset.num_examples=300','recipe.batch_size=16',"
               "'recipe.dataset.eval_examples=16','recipe.num_final_samples=0',"
               "'recipe.evaluators=[]','recipe.eval_every=0'")
# sft_then_rl with an SFT second stage: the mechanism, independent of the rl recipe.
ARGS = ["+pipeline=sft_then_rl", "pipeline.stages.1.recipe=sft",
        f"pipeline.stages.0.overrides=['recipe.max_steps=2','recipe.save_every=0',{STAGE_QUICK}]",
        f"pipeline.stages.1.overrides=['recipe.max_steps=5','recipe.save_every=1',{STAGE_QUICK}]",
        "hydra.run.dir=pipe"]


def test_killed_pipeline_resumes_its_second_stage_without_redoing_the_first(
        tmp_path: Path, runner_home: Path) -> None:
    process = subprocess.Popen(runner_command(*ARGS), cwd=tmp_path, env=runner_env(runner_home),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "pipe" / "rl" / "run.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if second.is_file() and json.loads(second.read_text()).get("checkpoints"):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the pipeline finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = json.loads((tmp_path / "pipe" / "sft" / "run.json").read_text())
    assert first["status"] == "completed"
    assert json.loads(second.read_text())["status"] == "running"

    result = run_runner(*ARGS, cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "already completed" in result.stdout and "Resuming from step" in result.stdout
    again = json.loads((tmp_path / "pipe" / "sft" / "run.json").read_text())
    assert again["attempts"] == 1 and again["finished_at"] == first["finished_at"]
    record = json.loads(second.read_text())
    assert record["status"] == "completed" and record["attempts"] == 2
    # The second stage started from the first stage's final checkpoint.
    assert record["init_from"] == first["checkpoints"][-1]["path"]
    state = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["sft", "rl"]
    assert state["stages"][1]["final_checkpoint"] == record["checkpoints"][-1]["path"]
    steps = [json.loads(line)["step"] for line in
             (second.parent / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == list(range(1, 6))


def test_bad_pipeline_is_refused_naming_the_field(tmp_path: Path, runner_home: Path) -> None:
    result = run_runner("+pipeline=sft_then_rl", "pipeline.stages.1.name=sft", cwd=tmp_path,
                        home=runner_home)
    assert result.returncode == 2
    assert "stage names must be unique" in result.stderr
