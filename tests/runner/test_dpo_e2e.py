"""The dpo recipe through the real CLI: metrics, reference logprobs once, clean data errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loops_runner.runner.local_daemon import find_control_plane
from tests.runner.conftest import run_runner

# 32 pairs in batches of 16: two steps per epoch.
QUICK = ["+recipe=dpo", "recipe.dataset.num_pairs=32", "recipe.dataset.eval_pairs=8",
         "recipe.batch_size=16", "recipe.max_steps=null", "recipe.eval_every=2",
         "recipe.save_every=2",
         "recipe.evaluators=[{kind: sampling, num_prompts: 4, max_tokens: 4}]"]


def test_dpo_trains_and_computes_reference_logprobs_once(tmp_path: Path,
                                                         runner_home: Path) -> None:
    run_dir = tmp_path / "dpo"
    first = run_runner(*QUICK, "recipe.epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                       home=runner_home, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    record = json.loads((run_dir / "run.json").read_text())
    final = record["final_metrics"]
    assert final["steps"] == 4
    # Two epochs, yet every distinct sequence (chosen and rejected of 40 pairs) scored once.
    caches = list(run_dir.glob("reference-logprobs-*.json"))
    assert len(caches) == 1
    distinct = json.loads(caches[0].read_text())["sequences"]
    assert 70 <= distinct <= 80
    assert final["reference/computed_sequences"] == distinct
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = lines[0]
    # policy == reference: every reward is 0 up to float noise (which may break a tie
    # either way, so the step-0 accuracy need not be exactly 0), the loss is ln 2.
    assert start["step"] == 0 and abs(start["eval/dpo/margin"]) < 1e-4
    assert start["eval/dpo/loss"] == pytest.approx(math.log(2), abs=1e-4)
    trained = [m for m in lines if "dpo/loss" in m]
    assert [m["step"] for m in trained] == [1, 2, 3, 4]
    for name in ("dpo/accuracy", "dpo/margin", "dpo/chosen_reward", "dpo/rejected_reward"):
        assert name in trained[-1] and f"eval/{name}" in final
    assert final["eval/dpo/margin"] > 0  # the held-out margin moved the right way
    # Greedy task accuracy through the evaluators, before the first step and at each eval.
    assert 0.0 <= final["eval/accuracy"] <= 1.0 and "eval/accuracy" in start
    assert [m["step"] for m in lines if "eval/accuracy" in m] == [0, 2, 4]

    # One more epoch, resumed from the last checkpoint: the cache answers every reference.
    resumed = run_runner(*QUICK, "recipe.epochs=3", "resume.fork=true",
                         f"hydra.run.dir={run_dir}", cwd=tmp_path, home=runner_home,
                         timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming from step 4" in resumed.stdout
    final = json.loads((run_dir / "run.json").read_text())["final_metrics"]
    assert final["steps"] == 6 and final["reference/computed_sequences"] == 0
    assert list(run_dir.glob("reference-logprobs-*.json")) == caches


def test_bad_data_stops_before_provisioning_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"  # a fresh home: any provisioning would start a daemon here
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    result = run_runner("+recipe=dpo", f"recipe.dataset.source={bad}", cwd=tmp_path, home=home)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"loops-runner: {bad} line 1: missing field 'rejected' (found ['chosen', "
                     "'prompt']) (1 of 1 rows bad)"]
    assert find_control_plane(home) is None
    assert not list(tmp_path.glob("outputs/dpo/*/run.json"))

    chats = tmp_path / "chats.csv"
    chats.write_text("question,answer\nq,a\n")
    result = run_runner("+recipe=sft", f"recipe.dataset.source={chats}", cwd=tmp_path, home=home)
    assert result.returncode == 2
    assert "HYDRA_FULL_ERROR" not in result.stderr and "Traceback" not in result.stderr
    assert f"{chats} row 1: expected" in result.stderr
    assert find_control_plane(home) is None
