"""The distill recipe: teacher resolution, token checks, a real CLI run with an SFT teacher."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from loops_runner.rl.teacher import check_same_tokens, resolve_teacher
from loops_runner.runner.config import ConfigError
from loops_runner.runner.local_daemon import find_control_plane
from tests.runner.conftest import run_runner


def test_teacher_sources_resolve_or_say_what_to_do(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative run dirs resolve here, never in the checkout
    assert resolve_teacher("tiny").kind == "base_model"
    assert resolve_teacher("Qwen/Qwen3-0.6B").kind == "base_model"
    uri = "bt://loops:run-1/weights/step-000002"
    assert (resolve_teacher(uri).kind, resolve_teacher(uri).value) == ("checkpoint", uri)
    run_dir = tmp_path / "sft"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "config_hash": "x", "seed": 0, "run_name": "sft", "recipe": "loops_runner.recipes.sft.run",
        "backend": "local", "base_model": "tiny",
        "checkpoints": [{"step": 2, "path": "bt://loops:run-1/weights/step-000002"},
                        {"step": 4, "path": "bt://loops:run-1/weights/step-000004"}]}))
    resolved = resolve_teacher(str(run_dir))
    assert resolved.value == "bt://loops:run-1/weights/step-000004"  # the latest checkpoint
    with pytest.raises(ConfigError, match=r"outputs/sft/default does not exist; train it"):
        resolve_teacher("outputs/sft/default", hint="; train it first")


def test_a_teacher_with_other_tokens_is_refused(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    student = AutoTokenizer.from_pretrained(tiny_model_dir)
    check_same_tokens(student, copy.deepcopy(student), "same")
    other = copy.deepcopy(student)
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match=r"'other' cannot teach this student: chat templates "
                                          r"differ"):
        check_same_tokens(student, other, "other")
    other = copy.deepcopy(student)
    other.add_tokens(["<extra_token>"])
    with pytest.raises(ConfigError, match=r"vocabularies differ"):
        check_same_tokens(student, other, "other")


def test_missing_teacher_run_stops_before_provisioning(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_runner("+recipe=distill", cwd=tmp_path, home=home)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "loops-runner: recipe.teacher: outputs/sft/default does not exist; train it first: "
        "python -m loops_runner +recipe=sft, or choose another teacher with "
        "recipe.teacher=<base model | checkpoint | run dir | bt:// URI>"]
    assert find_control_plane(home) is None


def test_sft_run_teaches_the_base_model(tmp_path: Path, runner_home: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    sft = run_runner("+recipe=sft", "recipe.max_steps=4", "recipe.dataset.num_examples=200",
                     "recipe.batch_size=16", "recipe.eval_every=0", "recipe.num_final_samples=0",
                     "recipe.evaluators.0.num_prompts=14", f"hydra.run.dir={teacher_dir}",
                     cwd=tmp_path, home=runner_home, timeout=600)
    assert sft.returncode == 0, sft.stdout[-2000:] + sft.stderr[-2000:]
    run_dir = tmp_path / "distill"
    result = run_runner("+recipe=distill", f"recipe.teacher={teacher_dir}", "recipe.max_steps=3",
                        "recipe.prompts_per_step=4", "recipe.group_size=2",
                        "recipe.prompts.eval_prompts=8",
                        "recipe.evaluators=[{kind: sampling, num_prompts: 4}]",
                        "recipe.eval_every=0", f"hydra.run.dir={run_dir}",
                        # Rates (USD per million tokens) price each line and the summary.
                        "prices.trained=3.0", "prices.prompt=1.0", "prices.sampled=2.0",
                        cwd=tmp_path, home=runner_home, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start, end = lines[0], lines[-1]
    assert [m["step"] for m in lines] == [0, 1, 2, 3]
    # The SFT teacher differs from the untrained student, and three steps close part of the gap.
    # (The pretrained base and a short SFT teacher differ by little: ~2e-3 nats per token.)
    assert start["distill/reverse_kl"] > 1e-4
    assert end["distill/reverse_kl"] < start["distill/reverse_kl"]
    for metrics in lines[1:]:
        assert metrics["train/datums"] == 8  # 4 prompts × 2 samples, each trained on
        assert metrics["rollout/tokens"] > 0 and "distill/train_reverse_kl" in metrics
        # Tokens per step: the student's completions, the teacher's scoring prompts, the
        # trained datums; and what they cost at the given rates.
        assert metrics["tokens/sampled"] >= metrics["rollout/tokens"]
        assert metrics["tokens/prompt"] > 0 and metrics["tokens/trained"] > 0
        assert metrics["cost/usd"] == pytest.approx(
            (3 * metrics["tokens/trained"] + metrics["tokens/prompt"]
             + 2 * metrics["tokens/sampled"]) / 1e6)
    totals = {kind: end[f"tokens/{kind}_total"] for kind in ("trained", "prompt", "sampled")}
    assert totals == {kind: sum(m[f"tokens/{kind}"] for m in lines) for kind in totals}
    assert end["cost/usd_total"] == pytest.approx(sum(m["cost/usd"] for m in lines))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["tokens"] == totals
    assert (f"tokens trained {totals['trained']}, prompt {totals['prompt']}, sampled "
            f"{totals['sampled']}; ${end['cost/usd_total']:.4f} at your prices.*"
            in " ".join(result.stdout.split()))
    # One evaluation path: the student's greedy accuracy at every eval, the teacher's once.
    final = json.loads((run_dir / "run.json").read_text())["final_metrics"]
    for name in ("distill/teacher_logprob", "eval/accuracy"):
        assert name in start and name in final
    assert 0.0 <= start["eval/teacher/accuracy"] <= 1.0
    assert "eval/teacher/accuracy" not in end
