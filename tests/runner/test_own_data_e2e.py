"""A user's own data and plug-ins through the real CLI, as a new user meets them.

Each fault stops within seconds, before anything is provisioned (no daemon, no
run.json), with one line naming the file and row; the user's own SFT data is
evaluated on its own held-out rows; an edited data file is never answered with
the old run's results.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from tests.runner.conftest import private_home, run_runner

QUESTIONS = [(f"Convert {n} km to m.", f"{n * 1000} m") for n in range(1, 61)]


def write_chats(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in pairs))


def assert_refused_before_provisioning(result, home: Path, cwd: Path, *expected: str) -> str:
    """One ``loops-runner:`` line on stderr, no traceback, nothing provisioned or written."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("loops-runner: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in lines[0], lines[0]
    # No daemon, control plane or trainer was started for this home, and no run began.
    assert not (home / "runner").exists() and not list(home.glob("*.sqlite*"))
    assert not list(cwd.glob("outputs/**/run.json"))
    return lines[0]


@pytest.fixture
def fault_home(tmp_path_factory: pytest.TempPathFactory):
    with private_home(tmp_path_factory, "fault_home") as home:
        yield home


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("missing", None, ["nope.jsonl: no such file or folder (looked for "]),
    ("latin1", "latin-1", ["latin1.jsonl line 1: not valid UTF-8 (byte 0xe9", "UTF-8 encoded"]),
    ("no_assistant", [{"messages": [{"role": "user", "content": "hi"}]}] * 5,
     ["no_assistant.jsonl line 1: field 'messages' has no assistant turn"]),
    ("null_field", [{"prompt": "a", "completion": "b"}] * 8 + [{"prompt": None,
                                                                 "completion": "b"}],
     ["null_field.jsonl line 9: field 'prompt' is null",
      "recipe.dataset.bad_rows=skip trains on the other 8"]),
    ("other_roles", [{"messages": [{"role": "human", "content": "hi"},
                                   {"role": "bot", "content": "yo"}]}] * 4,
     ["recipe.dataset.roles='{human: user, bot: assistant}'"]),
    ("one_row", [{"prompt": "a", "completion": "b"}],
     ["one_row.jsonl: 1 usable conversations; at least 2 are needed"]),
])
def test_sft_data_faults_stop_before_provisioning(name: str, content, expected: list[str],
                                                  tmp_path: Path, fault_home: Path) -> None:
    source = "nope.jsonl" if content is None else f"{name}.jsonl"
    if content == "latin-1":
        (tmp_path / source).write_bytes(
            json.dumps({"prompt": "café", "completion": "ok"}, ensure_ascii=False)
            .encode("latin-1") + b"\n")
    elif content is not None:
        (tmp_path / source).write_text("".join(json.dumps(r) + "\n" for r in content))
    started = time.monotonic()
    result = run_runner("+recipe=sft", f"recipe.dataset.source={source}", cwd=tmp_path,
                        home=fault_home, timeout=120)
    assert time.monotonic() - started < 60
    assert_refused_before_provisioning(result, fault_home, tmp_path, *expected)


def test_rl_prompt_and_reward_faults_are_one_line(tmp_path: Path, fault_home: Path) -> None:
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    missing = run_runner("+recipe=rl", "recipe.reward=my_rewards:score",
                         "recipe.prompts=prompts.jsonl", cwd=tmp_path, home=fault_home)
    assert_refused_before_provisioning(
        missing, fault_home, tmp_path,
        "recipe.reward='my_rewards:score': no module named 'my_rewards' in the working "
        f"directory ({tmp_path}) or on PYTHONPATH")
    (tmp_path / "my_rewards.py").write_text("def score(prompt):\n    return 1.0\n")
    wrong = run_runner("+recipe=rl", "recipe.reward=my_rewards:score",
                       "recipe.prompts=prompts.jsonl", cwd=tmp_path, home=fault_home)
    assert_refused_before_provisioning(wrong, fault_home, tmp_path,
                                       "recipe.reward='my_rewards:score': score(prompt) cannot "
                                       "be called as (prompt, completion)")
    (tmp_path / "my_rewards.py").write_text("def scor(prompt, completion):\n    return 1.0\n")
    typo = run_runner("+recipe=rl", "recipe.reward=my_rewards:score",
                      "recipe.prompts=prompts.jsonl", cwd=tmp_path, home=fault_home)
    assert_refused_before_provisioning(typo, fault_home, tmp_path,
                                       "my_rewards has no 'score'; it defines: scor")
    gone = run_runner("+recipe=rl", "recipe.reward=my_rewards:scor",
                      "recipe.prompts=prompts.json", cwd=tmp_path, home=fault_home)
    assert_refused_before_provisioning(gone, fault_home, tmp_path,
                                       "prompts.json: no such file or folder")


def test_readme_column_mapping_on_a_csv_parses_both_ways(tmp_path: Path,
                                                         fault_home: Path) -> None:
    with (tmp_path / "qa.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows(QUESTIONS)
    for mapping in (["recipe.dataset.columns={question: prompt, answer: completion}"],
                    ["recipe.dataset.columns.question=prompt",
                     "recipe.dataset.columns.answer=completion"]):
        result = run_runner("+recipe=sft", "recipe.dataset.source=qa.csv", *mapping,
                            "dry_run=true", cwd=tmp_path, home=fault_home)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "data: qa.csv: 60 rows read, 48 train / 12 eval, 0 skipped" in result.stdout
        assert "plan: only 3 optimizer steps" in result.stdout  # small data is guided
    typo = run_runner("+recipe=sft", "recipe.dataset.source=qa.csv",
                      "recipe.dataset.colums={question: prompt}", cwd=tmp_path,
                      home=fault_home)
    assert typo.returncode != 0 and "Did you mean 'recipe.dataset.columns'?" in typo.stderr


def test_own_sft_data_is_scored_on_its_held_out_rows_and_is_part_of_the_identity(
        tmp_path: Path, runner_home: Path) -> None:
    data = tmp_path / "convert.jsonl"
    write_chats(data, QUESTIONS)
    args = ["+recipe=sft", "recipe.dataset.source=convert.jsonl", "recipe.max_steps=2",
            "recipe.batch_size=8", "recipe.num_final_samples=2"]
    first = run_runner(*args, cwd=tmp_path, home=runner_home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "data: convert.jsonl: 60 rows read, 48 train / 12 eval, 0 skipped" in first.stdout
    run_dir = next(tmp_path.glob("outputs/sft/*"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    keys = {key for line in metrics for key in line}
    assert {"eval/accuracy", "eval/accuracy/similarity", "eval/nll"} <= keys
    # Nothing of the task registry: no per-family figures on the user's data.
    assert not [k for k in keys if k.startswith("eval/accuracy/") and k != "eval/accuracy/"
                "similarity"]
    evals = [json.loads(line) for line in (run_dir / "evals.jsonl").open()]
    prompts = {q for q, _ in QUESTIONS}
    assert evals and all(e["settings"]["source"] == "heldout" for e in evals)
    assert all(s["prompt"] in prompts for e in evals for s in e["samples"])
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert len(samples) == 2 and all(s["prompt"] in prompts for s in samples)
    assert all(s["score"] in (0.0, 1.0) for s in samples)  # the ✓/✗ of the same rows

    again = run_runner(*args, cwd=tmp_path, home=runner_home)
    assert again.returncode == 0
    assert "already completed; its final metrics:" in again.stdout
    assert "resume.restart=true" in again.stdout

    write_chats(data, [*QUESTIONS[:-1], ("Convert 61 km to m.", "61000 m")])  # one row edited
    edited = run_runner(*args, cwd=tmp_path, home=runner_home)
    assert edited.returncode == 2
    assert "the data changed since the run in" in edited.stderr
    assert "resume.restart=true" in edited.stderr and "Traceback" not in edited.stderr
    assert "already completed" not in edited.stdout

    restarted = run_runner(*args, "resume.restart=true", cwd=tmp_path, home=runner_home)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    assert (run_dir / "previous-1" / "run.json").exists()  # nothing saved is lost
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["attempts"] == 1


def test_rl_on_user_prompts_reports_a_held_out_reward(tmp_path: Path,
                                                      runner_home: Path) -> None:
    (tmp_path / "lengths.py").write_text(
        "def score(prompt, completion, target):\n"
        "    return 1.0 / (1 + abs(len(completion) - target))\n")
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"Write {n} letters.", "target": n}) + "\n" for n in range(20)))
    result = run_runner("+recipe=rl", "recipe.reward=lengths:score",
                        "recipe.prompts=prompts.jsonl", "recipe.max_steps=2",
                        "recipe.groups_per_batch=2", "recipe.group_size=2",
                        "recipe.eval_prompts=4", "recipe.max_tokens=6", cwd=tmp_path,
                        home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data: prompts.jsonl: 20 rows read, 16 train / 4 eval, 0 skipped" in result.stdout
    metrics = [json.loads(line) for line in
               next(tmp_path.glob("outputs/rl/*/metrics.jsonl")).open()]
    rewards = {m["step"]: m["eval/reward"] for m in metrics if "eval/reward" in m}
    assert set(rewards) == {0, 2} and all(0 < r <= 1 for r in rewards.values())
