"""The real CLI in a subprocess against the real local stack (daemon, trainer, sampler)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loops_runner.runner.local_daemon import find_control_plane
from tests.runner.conftest import (
    run_runner,
    signal_after_checkpoint,
    trainer_urls,
    write_user_recipe,
)

# Small but real: enough steps for a falling loss, few enough for CI.
# The accuracy evaluator answers 14 prompts (2 per family), not 210: these tests
# check the mechanism; the learning figures come from benchmarks/ and docs/.
QUICK = ["recipe.dataset.num_examples=600", "recipe.batch_size=16", "recipe.eval_every=5",
         "recipe.dataset.eval_examples=32", "recipe.num_final_samples=2",
         "recipe.evaluators.0.num_prompts=14"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_single_run_trains_and_leaves_outputs(tmp_path: Path, runner_home: Path) -> None:
    result = run_runner("+recipe=sft", "recipe.max_steps=20", "recipe.save_every=10", *QUICK,
                        cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "sft").iterdir())
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["session_id"] and record["run_id"] and record["config_hash"]
    assert record["package_versions"]["torch"]
    assert [c["step"] for c in record["checkpoints"]] == [10, 20]
    assert all(c["path"].startswith("bt://loops:") for c in record["checkpoints"])
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics if "train/loss" in m] == list(range(1, 21))
    evals = [m["eval/nll"] for m in metrics if "eval/nll" in m]
    assert evals[-1] < evals[0]
    assert record["final_metrics"]["eval/nll"] == pytest.approx(evals[-1])
    # The console says what changed: step 0 against the end, three decimals.
    accuracy = [m["eval/accuracy"] for m in metrics if "eval/accuracy" in m]
    assert re.search(rf"eval/accuracy\s+│\s+{accuracy[0]:.3f}\s+│\s+{accuracy[-1]:.3f}",
                     result.stdout), result.stdout[-2000:]
    assert (run_dir / "config.resolved.yaml").is_file()
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all("completion" in s for s in samples)


def test_multirun_shares_one_trainer(tmp_path: Path, runner_home: Path) -> None:
    result = run_runner("-m", "+recipe=sft", "recipe.learning_rate=1e-3,3e-3", "model.rank=4,8",
                        "recipe.max_steps=4", "recipe.save_every=0", *QUICK,
                        "hydra.sweep.dir=sweep", cwd=tmp_path, home=runner_home, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "sweep" / "sweep.jsonl").read_text()
             .splitlines()]
    assert len(lines) == 4 and all(line["status"] == "completed" for line in lines)
    run_dirs = {Path(line["run_dir"]) for line in lines}
    assert len(run_dirs) == 4 and all((d / "run.json").is_file() for d in run_dirs)
    assert "sweep summary" in result.stdout
    # Each run wrote its report at its end, and the sweep its own when it closed.
    assert all((d / "report.html").is_file() for d in run_dirs)
    assert (tmp_path / "sweep" / "report.html").is_file()
    # One trainer process served every job: all runs report the same trainer URL.
    assert len(trainer_urls(runner_home, run_dirs)) == 1
    daemon = find_control_plane(runner_home)
    assert daemon is not None
    status = subprocess.run([sys.executable, "-m", "loops_runner.cli", "daemon", "status",
                             "--home", str(runner_home)], capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 0 and f"pid {daemon.pid} at {daemon.url}" in status.stdout


def test_interrupted_run_says_how_to_resume_and_resumes_to_the_same_result(
        tmp_path: Path, runner_home: Path) -> None:
    args = ["+recipe=sft", "recipe.max_steps=12", "recipe.save_every=4", "seed=7", *QUICK,
            "report=false"]
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    reference = run_runner(*args, cwd=reference_dir, home=runner_home)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads(next((reference_dir / "outputs" / "sft").iterdir())
                          .joinpath("run.json").read_text())["final_metrics"]

    work = tmp_path / "interrupted"
    work.mkdir()
    # Ctrl-C (SIGINT to the runner process) once the step-4 checkpoint exists.
    run_json, process = signal_after_checkpoint(args, cwd=work, home=runner_home, recipe="sft",
                                                step=4, signum=signal.SIGINT)
    output = process.output  # type: ignore[attr-defined]
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    hint = re.search(r"interrupted at step (\d+); re-run the same command to resume from "
                     r"step (\d+)", output)
    assert hint is not None, output[-3000:]
    record = json.loads(run_json.read_text())
    assert record["status"] == "stopped" and record["stop_reason"] == "interrupted"
    assert int(hint.group(2)) == record["checkpoints"][-1]["step"] >= 4
    assert int(hint.group(1)) >= int(hint.group(2))

    resumed = run_runner(*args, cwd=work, home=runner_home)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming from step" in resumed.stdout
    record = json.loads(run_json.read_text())
    assert record["status"] == "completed" and record["attempts"] == 2
    for key, value in expected.items():
        assert record["final_metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    steps = [m["step"] for m in read_metrics(run_json.parent) if "train/loss" in m]
    assert steps == list(range(1, 13))  # one line per step, none lost or doubled
    assert (run_json.parent / "metrics.jsonl.attempt-1").is_file()  # the killed attempt's log


def test_ctrl_c_in_a_sweep_ends_it_with_one_line_and_exit_130(tmp_path: Path,
                                                              runner_home: Path) -> None:
    # Two jobs one after another (the basic launcher); Ctrl-C in the first.
    args = ["-m", "+recipe=sft", "recipe.learning_rate=1e-3,3e-3", "recipe.max_steps=40",
            "recipe.save_every=2", *(a for a in QUICK if not a.startswith("recipe.eval_every")),
            "recipe.eval_every=0", "report=false",
            "hydra.sweep.dir=sweep"]
    run_json, process = signal_after_checkpoint(args, cwd=tmp_path, home=runner_home,
                                                recipe="sft", step=2, signum=signal.SIGINT,
                                                runs_glob="sweep/*/run.json")
    output = process.output  # type: ignore[attr-defined]
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert re.search(r"interrupted at step \d+; re-run the same command to resume from "
                     r"step \d+", output), output[-3000:]
    assert json.loads(run_json.read_text())["stop_reason"] == "interrupted"
    # The sweep stopped there: the second job never started.
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/run.json")) == \
        [run_json.parent.name]


def test_changed_config_refuses_to_resume(tmp_path: Path, runner_home: Path) -> None:
    run_dir = tmp_path / "pinned"
    args = ["+recipe=sft", "recipe.max_steps=2", "recipe.save_every=1", *QUICK,
            f"hydra.run.dir={run_dir}"]
    first = run_runner(*args, cwd=tmp_path, home=runner_home)
    assert first.returncode == 0, first.stderr[-2000:]
    record = json.loads((run_dir / "run.json").read_text())
    record["status"] = "failed"  # pretend it died, so a re-run would resume
    (run_dir / "run.json").write_text(json.dumps(record))
    refused = run_runner(*args, "recipe.learning_rate=0.02", cwd=tmp_path, home=runner_home)
    assert refused.returncode == 2
    assert "resume.fork=true" in refused.stderr


def test_user_recipe_from_another_directory_runs(tmp_path: Path, runner_home: Path) -> None:
    write_user_recipe(tmp_path, "two_steps", (
        "from pydantic import BaseModel\n"
        "from loops_runner.sdk import AdamParams, Datum, ModelInput, TensorData\n\n"
        "class Config(BaseModel):\n    learning_rate: float = 1e-2\n\n"
        "def run(ctx, cfg):\n"
        "    tokens = ctx.tokenizer.encode('Reverse the word: apple')\n"
        "    datum = Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={\n"
        "        'target_tokens': TensorData(data=tokens[1:], dtype='int64',"
        " shape=[len(tokens) - 1])})\n"
        "    losses = []\n"
        "    for step in range(1, 3):\n"
        "        out = ctx.training_client.forward_backward([datum]).result()\n"
        "        ctx.training_client.optim_step(AdamParams(learning_rate=cfg.learning_rate))"
        ".result()\n"
        "        ctx.log(step, {'train/loss': out.loss})\n"
        "        losses.append(out.loss)\n"
        "    return {'train/loss': losses[-1], 'improved': float(losses[-1] < losses[0])}\n"),
        "learning_rate: 0.05\n")
    result = run_runner("--config-dir", "configs", "+recipe=two_steps", cwd=tmp_path,
                        home=runner_home)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(next((tmp_path / "outputs" / "two_steps").iterdir())
                        .joinpath("run.json").read_text())
    assert record["status"] == "completed" and record["final_metrics"]["improved"] == 1.0


def test_sft_on_a_users_chats_ends_with_answers_to_their_held_out_prompts(
        tmp_path: Path, runner_home: Path) -> None:
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"] * 4
    chats = tmp_path / "greetings.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Greet {name} number {i}"},
        {"role": "assistant", "content": f"Hello, {name}!"}]}) + "\n"
        for i, name in enumerate(names)))
    result = run_runner("+recipe=sft", f"recipe.dataset.source={chats}", "recipe.max_steps=2",
                        "recipe.batch_size=8", "recipe.eval_every=0", "recipe.save_every=0",
                        "recipe.dataset.eval_examples=6", "recipe.num_final_samples=3",
                        "recipe.evaluators.0.num_prompts=7", "hydra.run.dir=mine",
                        cwd=tmp_path, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    samples = [json.loads(line)
               for line in (tmp_path / "mine" / "samples.jsonl").read_text().splitlines()]
    # The user's own held-out prompts and references, not the task registry's questions,
    # marked ✓/✗ by the same exact match that makes eval/accuracy.
    assert len(samples) == 3
    for sample in samples:
        assert sample["prompt"].startswith("Greet ") and sample["score"] in (0.0, 1.0)
        assert sample["reference"] == f"Hello, {sample['prompt'].split()[1]}!"
        assert sample["prompt"] in result.stdout
    metrics = read_metrics(tmp_path / "mine")
    assert "eval/accuracy" in metrics[-1] and "eval/accuracy/similarity" in metrics[-1]
    assert not any(key.startswith("eval/accuracy/capitals") for m in metrics for key in m)
