"""Every ``python -m loops_runner`` and ``loops-runner`` command in README and docs/ works.

Commands are collected from fenced shell blocks (with ``\\`` continuations) and from
inline code spans. Each training command must parse (Hydra's override grammar) and
runs as written with ``dry_run=true`` appended: the config composes and validates,
the data is read and checked, the plan is printed. It runs from a folder holding
the repository's ``examples/`` and a finished short SFT run in
``outputs/sft/default``, which the docs' eval, distill and report commands name.
Each ``loops-runner`` command must parse with the CLI's own parser; the read-only
ones also run. A command that needs something outside this machine (a Ray cluster,
a hosted checkpoint, an uninstalled sweeper plugin, a placeholder to fill in) is
parse-checked only, and the test says which.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner.conftest import REPO, run_runner, runner_env
from tests.runner.test_rl_e2e import ENV_MODULE

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PREFIXES = ("python -m loops_runner", "loops-runner ")
_FENCE = re.compile(r"^```")
_INLINE = re.compile(r"`([^`\n]+)`")
_PLACEHOLDER = re.compile(r"<[^>]*>|\[--|\.\.\.|\bMODEL\b|\bDIR\b|\bRUN\b")


def _strip_comment(line: str) -> str:
    tokens = shlex.split(line, comments=True)
    return shlex.join(tokens)


def documented_commands() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for document in DOCUMENTS:
        in_fence, pending = False, ""
        for line in document.read_text().splitlines():
            if _FENCE.match(line.strip()):
                in_fence, pending = not in_fence, ""
                continue
            if in_fence:
                text = pending + line.strip().removeprefix("$ ")
                if text.endswith("\\"):
                    pending = text[:-1] + " "
                    continue
                pending = ""
                for part in text.split(" && "):  # `a && b` shows two commands
                    if part.strip().startswith(PREFIXES):
                        found.setdefault(_strip_comment(part.strip()), document.name)
            else:
                for span in _INLINE.findall(line):
                    if span.startswith(PREFIXES) and re.match(r"(python -m loops_runner|"
                                                              r"loops-runner [a-z])", span):
                        found.setdefault(span.strip(), document.name)
    return sorted((where, command) for command, where in found.items())


COMMANDS = documented_commands()
TRAINING = [(w, c) for w, c in COMMANDS if c.startswith("python -m loops_runner")]
OPERATIONS = [(w, c) for w, c in COMMANDS if c.startswith("loops-runner ")]


def test_the_docs_show_commands_of_both_kinds() -> None:
    assert len(TRAINING) >= 20 and len(OPERATIONS) >= 10


def _runner_args(command: str) -> list[str]:
    tokens = shlex.split(command)
    assert tokens[:3] == ["python", "-m", "loops_runner"], command
    return tokens[3:]


def _parse_only_reason(command: str) -> str | None:
    if _PLACEHOLDER.search(command):
        return "a placeholder to fill in"
    if "hydra/launcher=ray" in command:
        return "a running Ray cluster (address=auto)"
    if "hydra/sweeper=optuna" in command and importlib.util.find_spec(
            "hydra_plugins.hydra_optuna_sweeper") is None:
        return "the hydra-optuna-sweeper plugin, which the docs install first"
    if "backend=baseten" in command or "bt://" in command:
        # (tests/runner/test_cloud_only_install.py runs docs/baseten.md's against a stand-in)
        return "a hosted account"
    recipe = re.search(r"\+recipe=(\w+)", command)
    if recipe and "--config-dir" not in command and not (
            REPO / "conf" / "recipe" / f"{recipe.group(1)}.yaml").exists():
        return f"the recipe {recipe.group(1)!r} of the text around it (not shipped)"
    return None


@pytest.fixture(scope="module")
def docs_cwd(tmp_path_factory: pytest.TempPathFactory, runner_home: Path) -> Path:
    """A user's folder: the examples, and a short finished SFT run at outputs/sft/default."""
    cwd = tmp_path_factory.mktemp("docs_cwd")
    shutil.copytree(REPO / "examples", cwd / "examples")
    # The files the docs' examples ask a user to bring.
    (cwd / "pairs.jsonl").write_text("".join(json.dumps(
        {"prompt": f"{n} + {n}?", "chosen": str(2 * n), "rejected": str(2 * n + 1)}) + "\n"
        for n in range(20)))
    (cwd / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say {n}."}) + "\n"
                                               for n in range(20)))
    (cwd / "my_rewards.py").write_text("def score(prompt, completion):\n"
                                       "    return float(len(completion) < 10)\n")
    (cwd / "my_envs.py").write_text(ENV_MODULE)
    result = run_runner("+recipe=sft", "recipe.max_steps=2", "recipe.eval_every=0",
                        "recipe.evaluators=[]", "recipe.num_final_samples=0", "report=false",
                        "hydra.run.dir=outputs/sft/default", cwd=cwd, home=runner_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd


@pytest.mark.parametrize(("where", "command"), TRAINING, ids=[c for _, c in TRAINING])
def test_training_command_parses_and_dry_runs(where: str, command: str, docs_cwd: Path,
                                             runner_home: Path) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = _runner_args(command)
    # Hydra's own flags and their values are not overrides.
    valued = {"--cfg", "-c", "--config-dir", "-cd", "--config-name", "-cn", "--package", "-p",
              "--info", "-i"}
    overrides = [a for i, a in enumerate(args) if not a.startswith("-")
                 and (i == 0 or args[i - 1] not in valued)]
    OverridesParser.create().parse_overrides(overrides)  # a grammar error fails here
    reason = _parse_only_reason(command)
    if reason is not None:
        return  # parse-checked: running it needs {reason}
    if not any(a.startswith(("--cfg", "--help", "-h", "dry_run=")) for a in args):
        args.append("dry_run=true")
    result = run_runner(*args, cwd=docs_cwd, home=runner_home, timeout=300)
    assert result.returncode == 0, (f"{where}: {command}\n" + result.stdout[-2000:]
                                    + result.stderr[-2000:])
    assert "Traceback" not in result.stderr


# Read-only commands that run for real (in the folder of the fixture); the rest (servers,
# downloads, stopping the daemon, reports of runs the folder does not hold) only parse.
_RUNNABLE = {"loops-runner models info tiny",
             "loops-runner checkpoints list outputs/sft/default",
             "loops-runner report outputs/sft/default",
             "loops-runner report outputs/sft/default --no-png"}


@pytest.mark.parametrize(("where", "command"), OPERATIONS, ids=[c for _, c in OPERATIONS])
def test_operations_command_parses_and_the_read_only_ones_run(where: str, command: str,
                                                             docs_cwd: Path,
                                                             runner_home: Path) -> None:
    from loops_runner.cli import build_parser

    tokens = [t for t in shlex.split(command)[1:] if t != "&"]
    # A placeholder may hold spaces (`<run dir>`): fill it in before splitting.
    filled = [re.sub(r"[\[\]]", "", t)
              for t in shlex.split(re.sub(r"<[^>]*>", "x", command))[1:] if t != "&"]
    filled = [t for t in filled if t]
    build_parser().parse_args(filled)  # argparse exits (SystemExit) on a bad command
    if command not in _RUNNABLE:
        return
    result = subprocess.run([sys.executable, "-m", "loops_runner.cli", *tokens], cwd=docs_cwd,
                            env=runner_env(runner_home), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (f"{where}: {command}\n" + result.stdout[-2000:]
                                    + result.stderr[-2000:])
