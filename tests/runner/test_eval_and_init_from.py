"""Evaluators inside SFT, the ``eval`` recipe, and ``init_from`` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runner.conftest import run_runner

QUICK = ["recipe.dataset.num_examples=300", "recipe.batch_size=16",
         "recipe.dataset.eval_examples=16", "recipe.num_final_samples=2",
         "recipe.evaluators.0.num_prompts=12"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory: pytest.TempPathFactory, runner_home: Path) -> Path:
    """A short SFT run: checkpoints at steps 3 and 6, evaluations at 0, 3 and 6."""
    work = tmp_path_factory.mktemp("sft_for_eval")
    result = run_runner("+recipe=sft", "recipe.max_steps=6", "recipe.save_every=3",
                        "recipe.eval_every=3", *QUICK, "hydra.run.dir=sft_a", cwd=work,
                        home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work / "sft_a"


def test_sft_reports_accuracy_before_and_after_with_its_settings(sft_run: Path) -> None:
    metrics = _lines(sft_run / "metrics.jsonl")
    assert [m["step"] for m in metrics if "eval/accuracy" in m] == [0, 3, 6]
    assert all(0.0 <= m["eval/accuracy"] <= 1.0 for m in metrics if "eval/accuracy" in m)
    evals = _lines(sft_run / "evals.jsonl")
    assert [e["step"] for e in evals] == [0, 3, 6]
    assert evals[0]["settings"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "n": 1,
                                    "seed": 0, "num_prompts": 12, "source": "tasks"}
    assert evals[-1]["model"].endswith("@step-6")
    samples = _lines(sft_run / "samples.jsonl")
    assert len(samples) == 2 and all(s["score"] in (0.0, 1.0) for s in samples)
    # The task registry's held-out questions, the same ones at every step.
    from loops_runner.tasks import sample_rows

    held_out = [row["prompt"] for row in sample_rows(12, split="heldout", unique=True)]
    assert [s["prompt"] for s in evals[0]["samples"]] == held_out[:8]
    assert [s["prompt"] for s in evals[-1]["samples"]] == held_out[:8]


def test_init_from_a_run_dir_starts_from_its_latest_weights(sft_run: Path, tmp_path: Path,
                                                            runner_home: Path) -> None:
    result = run_runner("+recipe=sft", f"init_from={sft_run}", "recipe.max_steps=2",
                        "recipe.save_every=0", "recipe.eval_every=0", *QUICK,
                        "hydra.run.dir=sft_b", cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    source = json.loads((sft_run / "run.json").read_text())
    record = json.loads((tmp_path / "sft_b" / "run.json").read_text())
    assert record["init_from"] == source["checkpoints"][-1]["path"]
    assert record["run_id"] != source["run_id"]
    before = _lines(sft_run / "metrics.jsonl")
    after = _lines(tmp_path / "sft_b" / "metrics.jsonl")
    # Step 0 of the new run scores the loaded weights, not the base model.
    assert after[0]["eval/nll"] == pytest.approx(before[-1]["eval/nll"], abs=1e-3)
    # ... and those differ from the base by far more than that tolerance (the pretrained
    # base leaves SFT less to gain than a random init: ~0.05 nats in this short run).
    assert before[0]["eval/nll"] - after[0]["eval/nll"] > 0.02
    # Fresh optimizer: the learning-rate warmup starts again from step 1.
    assert [m["step"] for m in after if "train/loss" in m] == [1, 2]


def test_init_from_with_another_rank_or_base_model_is_refused_before_training(
        sft_run: Path, tmp_path: Path, runner_home: Path) -> None:
    wrong_rank = run_runner("+recipe=sft", f"init_from={sft_run}@3", "model.rank=8", *QUICK,
                            "hydra.run.dir=rank8", cwd=tmp_path, home=runner_home)
    assert wrong_rank.returncode == 2
    assert "has LoRA rank 16, but this run uses model.rank=8" in wrong_rank.stderr
    assert not (tmp_path / "rank8" / "run.json").exists()  # no run was provisioned
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_model.safetensors").write_bytes(b"")
    (foreign / "adapter_config.json").write_text(json.dumps(
        {"r": 16, "peft_type": "LORA", "base_model_name_or_path": "Qwen/Qwen3-0.6B"}))
    wrong_base = run_runner("+recipe=sft", f"init_from={foreign}", *QUICK,
                            "hydra.run.dir=foreign_run", cwd=tmp_path, home=runner_home)
    assert wrong_base.returncode == 2
    assert "was trained on base model 'Qwen/Qwen3-0.6B'" in wrong_base.stderr
    assert not (tmp_path / "foreign_run" / "metrics.jsonl").exists()


def test_eval_recipe_compares_base_and_checkpoint_on_the_same_prompts(
        sft_run: Path, tmp_path: Path, runner_home: Path) -> None:
    result = run_runner("+recipe=eval", f"recipe.models=[base,{sft_run}@3,{sft_run}]",
                        "recipe.evaluators.0.num_prompts=12", "recipe.evaluators.1.num_examples=16",
                        "hydra.run.dir=ev", cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "eval/accuracy" in result.stdout and "eval/task_nll" in result.stdout
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    models = report["models"]
    assert [m["reference"] for m in models] == ["base", f"{sft_run}@3", str(sft_run)]
    nll = [next(r for r in m["results"] if r["evaluator"] == "task_nll")["metrics"]
           ["eval/task_nll"] for m in models]
    assert nll[2] < nll[1] < nll[0]  # training on task chats lowers the held-out task NLL
    accuracy = [next(r for r in m["results"] if r["evaluator"] == "accuracy") for m in models]
    assert all(a["settings"]["temperature"] == 0.0 and a["settings"]["n"] == 1
               for a in accuracy)
    assert len({tuple(s["prompt"] for s in a["samples"]) for a in accuracy}) == 1
    assert models[2]["results"][0]["model"].startswith("bt://loops:")
    # Each model's line counts what evaluating it sampled and prompted (nothing trained).
    lines = _lines(tmp_path / "ev" / "metrics.jsonl")
    assert len(lines) == 3
    assert all(m["tokens/sampled"] > 0 and m["tokens/prompt"] > 0 and m["tokens/trained"] == 0
               for m in lines)
    sampled = lines[-1]["tokens/sampled_total"]
    assert sampled == sum(m["tokens/sampled"] for m in lines)
    assert f"sampled {sampled} (run.json)" in " ".join(result.stdout.split())


def test_checkpoints_list_download_and_export_of_a_run_dir(sft_run: Path, tmp_path: Path,
                                                           runner_home: Path) -> None:
    import hashlib
    import subprocess
    import sys

    from tests.runner.conftest import runner_env

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "loops_runner.cli", *args, "--home",
                               str(runner_home)], capture_output=True, text=True, timeout=300,
                              env=runner_env(runner_home))

    record = json.loads((sft_run / "run.json").read_text())
    listed = cli("checkpoints", "list", str(sft_run))
    assert listed.returncode == 0, listed.stderr[-2000:]
    for checkpoint in record["checkpoints"]:
        assert checkpoint["path"].rsplit("/", 1)[-1] in listed.stdout
    dest = tmp_path / "step3"
    fetched = cli("checkpoints", "download", f"{sft_run}@3", "--to", str(dest))
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    manifest = json.loads((dest / "checkpoint.json").read_text())
    assert manifest["step"] == 3
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest
    again = cli("checkpoints", "download", f"{sft_run}@3", "--to", str(dest))
    assert again.returncode != 0 and "already has files" in again.stderr
    exported = cli("export", str(sft_run), "--to", str(tmp_path / "peft"))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert record["checkpoints"][-1]["path"] in exported.stdout
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()


def test_a_checkpoint_judge_scores_rl_rewards_and_its_run_stops_with_the_job(
        sft_run: Path, tmp_path: Path, runner_home: Path) -> None:
    import datetime as dt
    import sqlite3

    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is {i} + 1?"}) + "\n" for i in range(4)))
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S")
    result = run_runner("+recipe=rl", f"recipe.judge={sft_run}", "recipe.prompts=prompts.jsonl",
                        "recipe.max_steps=1", "recipe.groups_per_batch=2", "recipe.group_size=2",
                        "recipe.eval_prompts=0", "hydra.run.dir=judged", cwd=tmp_path,
                        home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Judge: {sft_run} (step 6) (checkpoint)" in " ".join(result.stdout.split())
    [line] = _lines(tmp_path / "judged" / "metrics.jsonl")
    assert 0 < line["rollout/env/judge_score"] < 1
    assert line["rollout/reward_mean"] == line["rollout/env/judge_score"]
    # The judge was a run of its own (the checkpoint loaded on the trainer); it is stopped,
    # while the policy's run stays open for reuse (the local backend keeps it warm).
    policy_runs = json.loads((tmp_path / "judged" / "run.json").read_text())["run_ids"]
    [db] = list(runner_home.rglob("control_plane.sqlite"))
    with sqlite3.connect(db) as connection:
        runs = dict(connection.execute("SELECT id, status FROM runs WHERE created_at >= ?",
                                       (since,)).fetchall())
    judge_runs = {run: status for run, status in runs.items() if run not in policy_runs}
    assert list(judge_runs.values()) == ["STOPPED"], runs
    assert all(runs[run] != "STOPPED" for run in policy_runs if run in runs)
