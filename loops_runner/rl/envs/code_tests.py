"""Write a small Python function; the reward is the share of its tests that pass.

``recipe.env=loops_runner.rl.envs.code_tests:make_dataset`` (``+recipe=rl_code``).
The model sees a function's signature and what it should do, and answers with
the expression after ``return`` (or a whole ``def``). The answer and the
problem's tests run in a sandbox (``loops_runner.rl.sandbox``): a separate
process with time, memory, CPU and process limits, no network, and a scratch
directory removed afterwards. Tests are Python expressions that must be true,
e.g. ``double(3) == 6``.

* A run that ends normally is scored by the share of tests passed (code that
  does not parse or raises fails its tests), plus a small bonus for code that
  loads at all (``parse_bonus``).
* A run the sandbox had to stop (timeout, memory, processes, network, writes
  outside its directory, ...) fails the episode with the reason
  (``step: SandboxError: timeout: ...``): it is counted in ``rollout/errors``,
  never trained on, and the run goes on.

``env_args``: ``problems`` (a JSONL file of ``{"name", "signature",
"description", "tests": [...]}`` rows; default: the built-in set below),
``num_problems``, ``sandbox`` (``process``, ``docker[:IMAGE]``,
``podman[:IMAGE]``), the limits ``wall_s``, ``cpu_s``, ``memory_mb``,
``max_processes``, and ``parse_bonus`` (see ``CodeEnv``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loops_runner.rl.datasets import BuilderListDataset, DatasetSetup
from loops_runner.rl.message_env import Message, MessageEnv, MessageEnvGroupBuilder, MessageStep
from loops_runner.rl.sandbox import Sandbox, SandboxError, SandboxLimits, make_sandbox


class CodeProblem(BaseModel):
    """One function to write and the expressions that must hold for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    signature: str = Field(min_length=3, max_length=200)  # e.g. "double(x)"
    description: str = Field(min_length=1, max_length=500)
    tests: tuple[str, ...] = Field(min_length=1, max_length=50)


# Small problems of the kind a tiny model can attempt: answers as short as
# ``x``, ``x + 1`` or ``0`` pass some tests, so groups get mixed rewards.
BUILTIN_PROBLEMS: tuple[CodeProblem, ...] = tuple(CodeProblem(**row) for row in (
    {"name": "identity", "signature": "identity(x)", "description": "returns x unchanged",
     "tests": ("identity(0) == 0", "identity(5) == 5", "identity('a') == 'a'")},
    {"name": "double", "signature": "double(x)", "description": "returns twice x",
     "tests": ("double(0) == 0", "double(2) == 4", "double(5) == 10")},
    {"name": "increment", "signature": "increment(x)", "description": "returns x plus one",
     "tests": ("increment(0) == 1", "increment(4) == 5", "increment(-1) == 0")},
    {"name": "square", "signature": "square(x)", "description": "returns x squared",
     "tests": ("square(0) == 0", "square(1) == 1", "square(3) == 9")},
    {"name": "negate", "signature": "negate(x)", "description": "returns minus x",
     "tests": ("negate(0) == 0", "negate(3) == -3", "negate(-2) == 2")},
    {"name": "add", "signature": "add(a, b)", "description": "returns the sum of a and b",
     "tests": ("add(0, 0) == 0", "add(1, 2) == 3", "add(5, 5) == 10")},
    {"name": "first", "signature": "first(items)", "description": "returns the first item",
     "tests": ("first([1, 2]) == 1", "first('xy') == 'x'", "first([0]) == 0")},
    {"name": "length", "signature": "length(items)", "description": "returns how many items",
     "tests": ("length([]) == 0", "length([1]) == 1", "length('abc') == 3")},
    {"name": "is_even", "signature": "is_even(n)", "description": "True when n is even",
     "tests": ("is_even(2) is True", "is_even(3) is False", "is_even(0) is True")},
    {"name": "larger", "signature": "larger(a, b)", "description": "returns the larger of a, b",
     "tests": ("larger(1, 2) == 2", "larger(5, 3) == 5", "larger(0, 0) == 0")},
    {"name": "zero", "signature": "zero(x)", "description": "returns 0 whatever x is",
     "tests": ("zero(1) == 0", "zero('a') == 0", "zero(None) == 0")},
    {"name": "shout", "signature": "shout(text)", "description": "returns text in capitals",
     "tests": ("shout('a') == 'A'", "shout('hi') == 'HI'", "shout('') == ''")},
))

_FENCE = re.compile(r"```(?:python)?\n?(.*?)(?:```|$)", re.DOTALL)
# The runner reports its count on a line that starts with a per-run nonce, so
# what the program under test prints cannot be mistaken for it.
_RUNNER = '''import json, sys
tests = json.loads(open("tests.json").read())
passed = 0
loaded = False
try:
    import solution
    space, loaded = vars(solution), True
except MemoryError:
    raise
except BaseException as error:
    print(f"solution: {type(error).__name__}: {error}", file=sys.stderr)
    space = {}
# Every test runs, loaded or not: a test may hold more than a call of the function.
for test in tests:
    try:
        if eval(test, dict(space)):
            passed += 1
        else:
            print(f"failed: {test}", file=sys.stderr)
    except MemoryError:
        raise
    except BaseException as error:
        print(f"{test}: {type(error).__name__}: {error}", file=sys.stderr)
print(NONCE + json.dumps({"passed": passed, "total": len(tests), "loaded": loaded}))
'''


def solution_source(problem: CodeProblem, reply: str) -> str:
    """The module the reply makes: a whole ``def`` when it wrote one, else the
    reply's first line as the expression after ``return``."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    if re.search(rf"^\s*def\s+{problem.name}\s*\(", text, re.MULTILINE):
        return text.strip() + "\n"
    expression = (text.strip().splitlines() or [""])[0].strip()
    if expression.startswith("return "):
        expression = expression[len("return "):]
    return f"def {problem.signature}:\n    return {expression or 'None'}\n"


class TestRun(NamedTuple):
    passed: int
    total: int
    loaded: bool  # the solution module imported (it parses and its top level ran)
    seconds: float


def run_tests(sandbox: Sandbox, problem: CodeProblem, reply: str,
              limits: SandboxLimits) -> TestRun:
    """How the reply's code did on the problem's tests; raises ``SandboxError`` when
    the sandbox had to stop it."""
    nonce = f"@@{uuid.uuid4().hex}@@"
    result = sandbox.run(f"NONCE = {nonce!r}\n{_RUNNER}", limits=limits, files={
        "solution.py": solution_source(problem, reply),
        "tests.json": json.dumps(list(problem.tests))})
    if result.contained:
        raise SandboxError(result)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(nonce):
            counts = json.loads(line[len(nonce):])
            return TestRun(int(counts["passed"]), int(counts["total"]), bool(counts["loaded"]),
                           result.wall_s)
    # The program ended the process itself (sys.exit, os._exit) before the count.
    return TestRun(0, len(problem.tests), False, result.wall_s)


class CodeEnv(MessageEnv):
    """One attempt at one problem; replies that repeat within a group are run once.

    Reward: ``parse_bonus`` when the code loads (it parses and its top level
    runs) plus ``1 - parse_bonus`` times the share of tests passed. A small
    bonus gives a model that writes no code yet a first signal (a bare name
    parses, a sentence does not); 0 scores the tests alone.
    """

    def __init__(self, problem: CodeProblem, sandbox: Sandbox, limits: SandboxLimits,
                 cache: dict[str, TestRun | SandboxError], parse_bonus: float) -> None:
        self.problem, self.sandbox, self.limits, self.cache = problem, sandbox, limits, cache
        self.parse_bonus = parse_bonus

    def initial_messages(self) -> list[Message]:
        return [{"role": "user", "content": (
            f"Write the Python function {self.problem.signature}: it "
            f"{self.problem.description}. Reply with only the expression after return.\n"
            f"def {self.problem.signature}:\n    return")}]

    def step_reply(self, reply: str) -> MessageStep:
        key = solution_source(self.problem, reply)
        if key not in self.cache:
            try:
                self.cache[key] = run_tests(self.sandbox, self.problem, reply, self.limits)
            except SandboxError as error:  # a repeat must not cost the limit again
                self.cache[key] = error
        outcome = self.cache[key]
        if isinstance(outcome, SandboxError):
            raise outcome
        share = outcome.passed / outcome.total
        reward = self.parse_bonus * outcome.loaded + (1 - self.parse_bonus) * share
        return MessageStep(reward, True, metrics={
            "tests_passed": share, "all_passed": float(outcome.passed == outcome.total),
            "loaded": float(outcome.loaded), "sandbox_s": outcome.seconds})


class CodeGroupBuilder(MessageEnvGroupBuilder):
    """A group on one problem, sharing the cache of replies already run."""

    def __init__(self, problem: CodeProblem, sandbox: Sandbox, limits: SandboxLimits,
                 tokenizer: Any, parse_bonus: float) -> None:
        cache: dict[str, TestRun | SandboxError] = {}
        super().__init__(lambda: CodeEnv(problem, sandbox, limits, cache, parse_bonus),
                         tokenizer,
                         prompt=f"def {problem.signature}: {problem.description}",
                         tags=["code"])


def read_problems(path: str | Path) -> list[CodeProblem]:
    """Problems from a JSONL file; a bad row is an error naming its line."""
    problems = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                problems.append(CodeProblem.model_validate_json(line))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"recipe.env_args.problems: {path} line {number}: "
                                 f"{where}: {first['msg']}") from None
    if not problems:
        raise ValueError(f"recipe.env_args.problems: {path} has no problems")
    return problems


def make_dataset(setup: DatasetSetup, problems: str | None = None, num_problems: int = 0,
                 sandbox: str = "process", wall_s: float = 2.0, cpu_s: int = 1,
                 memory_mb: int = 512, max_processes: int = 8,
                 parse_bonus: float = 0.1) -> BuilderListDataset:
    chosen: Sequence[CodeProblem] = read_problems(problems) if problems else BUILTIN_PROBLEMS
    if num_problems > 0:
        chosen = chosen[:num_problems]
    try:
        limits = SandboxLimits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb,
                               max_processes=max_processes)
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"recipe.env_args.{first['loc'][0]}: {first['msg']}") from None
    if not 0.0 <= parse_bonus < 1.0:
        raise ValueError(f"recipe.env_args.parse_bonus: {parse_bonus} must be in [0, 1)")
    runner = make_sandbox(sandbox)
    return BuilderListDataset(
        [CodeGroupBuilder(problem, runner, limits, setup.tokenizer, parse_bonus)
         for problem in chosen], setup.groups_per_batch, setup.seed)
