"""``+recipe=rl_code`` through the real CLI: model output runs in the sandbox, and hostile
code in the problems' tests is contained, reported in ``rollout/errors`` with its reason,
and never stops the run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.runner.conftest import runner_command, runner_env


def problem(name: str, tests: list[str]) -> dict:
    return {"name": name, "signature": f"{name}(x)", "description": "returns x",
            "tests": [f"{name}(1) == 1", *tests]}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hostile_tests_are_contained_and_the_run_carries_on(tmp_path: Path,
                                                            runner_home: Path) -> None:
    real_home = tmp_path / "home"
    real_home.mkdir()
    # Every test expression runs whatever the model replied, so each group meets its attack.
    hostile = {
        "loop": "any(iter(int, 1))",  # zeros forever: loops without allocating
        "bomb": "[__import__('os').fork() for _ in range(50)] and True",
        "alloc": "len(bytearray(10 * 1024 ** 3)) > 0",
        "home": f"open({str(real_home / 'pwned')!r}, 'w').write('x') > 0",
        "sock": "__import__('socket').create_connection(('127.0.0.1', 9), 1) is None",
    }
    rows = [problem(name, [test]) for name, test in hostile.items()]
    rows += [problem(f"plain{i}", [f"plain{i}(0) == 0"]) for i in range(3)]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        runner_command("+recipe=rl_code", "recipe.env_args.problems=problems.jsonl",
                       # The CPU limit sits far above the wall clock so that the busy loop
                       # always meets the wall clock: at 1 s each, a runner whose wait woke
                       # late on a busy machine found the child already killed by the CPU
                       # limit (a single thread uses no more CPU than wall time).
                       "recipe.env_args.wall_s=1.0", "recipe.env_args.cpu_s=10",
                       "recipe.groups_per_batch=8",
                       "recipe.group_size=2", "recipe.max_steps=2",
                       "recipe.num_groups_to_log=8", "recipe.max_rollout_error_frac=1.0"),
        cwd=tmp_path, env={**runner_env(runner_home), "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [run_dir] = list((tmp_path / "outputs" / "rl_code").iterdir())
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    # Five hostile groups of two episodes fail every step; the three plain ones train.
    assert [m["rollout/errors"] for m in metrics] == [10, 10]
    assert all(m["rollout/env/loaded"] >= 0 for m in metrics)
    reasons: dict[str, set[str]] = {}
    for line in read_jsonl(run_dir / "rollouts.jsonl"):
        name = line["prompt"].split("(")[0].removeprefix("def ")
        reasons.setdefault(name, set()).update(e for e in line["errors"] if e)
    expected = {"loop": "SandboxError: timeout: still running after the 1 s wall-clock limit",
                "bomb": "SandboxError: processes: refused: more than 8 processes",
                "alloc": "SandboxError: memory: out of memory at the 512 MB",
                "home": "SandboxError: filesystem: refused: writing",
                "sock": "SandboxError: network: refused: network access"}
    for name, reason in expected.items():
        assert reasons[name] and all(reason in error for error in reasons[name]), reasons[name]
    assert all(not reasons[f"plain{i}"] for i in range(3))
    assert not (real_home / "pwned").exists()
    assert list(scratch.glob("loops-sandbox-*")) == []  # every scratch dir removed
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
