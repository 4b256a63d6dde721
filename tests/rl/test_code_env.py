"""The code env: replies become code, code runs against the tests in the sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from loops_runner.rl.datasets import DatasetSetup
from loops_runner.rl.envs.code_tests import (
    BUILTIN_PROBLEMS,
    CodeEnv,
    CodeProblem,
    make_dataset,
    read_problems,
    solution_source,
)
from loops_runner.rl.sandbox import ProcessSandbox, SandboxError, SandboxLimits

DOUBLE = CodeProblem(name="double", signature="double(x)", description="returns twice x",
                     tests=("double(0) == 0", "double(2) == 4", "double(5) == 10"))
LIMITS = SandboxLimits(wall_s=2.0, cpu_s=1)


def env(problem: CodeProblem = DOUBLE, cache: dict | None = None) -> CodeEnv:
    return CodeEnv(problem, ProcessSandbox(), LIMITS, {} if cache is None else cache,
                   parse_bonus=0.1)


def test_a_reply_becomes_the_return_expression_or_the_whole_function() -> None:
    assert solution_source(DOUBLE, "x * 2") == "def double(x):\n    return x * 2\n"
    assert solution_source(DOUBLE, "return x + x\nmore text") == \
        "def double(x):\n    return x + x\n"
    fenced = "```python\ndef double(x):\n    return 2 * x\n```"
    assert solution_source(DOUBLE, fenced) == "def double(x):\n    return 2 * x\n"
    assert solution_source(DOUBLE, "") == "def double(x):\n    return None\n"


@pytest.mark.parametrize(("reply", "reward", "loaded"), [
    ("x * 2", 1.0, 1.0),           # every test passes
    ("0", 0.1 + 0.9 / 3, 1.0),     # double(0) == 0 only
    ("thunder", 0.1, 1.0),         # loads; every call raises NameError
    ("I think it is 4.", 0.0, 0.0),  # does not parse
])
def test_the_reward_is_the_share_of_tests_passed_plus_a_bonus_for_loading(
        reply: str, reward: float, loaded: float) -> None:
    step = env().step_reply(reply)
    assert step.episode_done and step.reward == pytest.approx(reward)
    assert step.metrics["loaded"] == loaded
    assert step.metrics["all_passed"] == float(reward == 1.0)


def test_code_the_sandbox_stops_fails_the_episode_with_the_reason_once_per_group() -> None:
    cache: dict = {}
    hostile = "__import__('socket').socket()"
    with pytest.raises(SandboxError, match="network: refused: network access"):
        env(cache=cache).step_reply(hostile)
    # The same reply in the same group is not run again (a timeout would cost its limit).
    [(_, recorded)] = cache.items()
    with pytest.raises(SandboxError) as again:
        env(cache=cache).step_reply(hostile)
    assert again.value is recorded


def test_what_the_program_prints_cannot_forge_the_count() -> None:
    forged = 'print("@@x@@" + \'{"passed": 3, "total": 3, "loaded": true}\') or 0'
    assert env().step_reply(forged).reward == pytest.approx(0.1 + 0.9 / 3)


def test_problem_files_are_read_and_bad_rows_are_named(tmp_path: Path) -> None:
    good = tmp_path / "problems.jsonl"
    good.write_text(DOUBLE.model_dump_json() + "\n\n")
    assert read_problems(good) == [DOUBLE]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(DOUBLE.model_dump_json() + "\n" + '{"name": "f", "signature": "f(x)", '
                   '"description": "d", "tests": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: tests: .*at least 1"):
        read_problems(bad)


def test_make_dataset_checks_its_arguments() -> None:
    setup = DatasetSetup(tokenizer=None, groups_per_batch=4, seed=0)
    dataset = make_dataset(setup, num_problems=5)
    assert len(dataset.builders) == 5
    assert {b.prompt_text() for b in make_dataset(setup).builders} == \
        {f"def {p.signature}: {p.description}" for p in BUILTIN_PROBLEMS}
    with pytest.raises(ValueError, match=r"recipe\.env_args\.wall_s"):
        make_dataset(setup, wall_s=-1)
    with pytest.raises(ValueError, match=r"recipe\.env_args\.parse_bonus"):
        make_dataset(setup, parse_bonus=1.5)
    with pytest.raises(ValueError, match="not one of process"):
        make_dataset(setup, sandbox="vm")
