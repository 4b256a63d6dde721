"""Running a recipe through the real CLI from a benchmark and reading what it wrote.

The one helper the learning checks (``benchmarks/learning/``) and the CLI-driven
measures (``rl_step``, ``anchors``, ``sweep_parallel``) share: a CLI command (a
run in a run dir of its own, or a sweep), a run's ``metrics.jsonl``, a scratch
reward any model can learn, and stopping the home's daemon when the benchmark is
done with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A reward that differs between samples of a random or pretrained model alike, so
# every step trains (the share of digit characters in the reply).
DIGIT_REWARD = '''
def score(prompt, completion, **row):
    return sum(c.isdigit() for c in completion) / max(1, len(completion))
'''


class RunFailed(RuntimeError):
    """A CLI run exited non-zero; the message holds the tail of its output."""


def cli_env(home: Path | str | None, threads: int | None = None) -> dict[str, str]:
    """The environment of a benchmark's CLI run: offline, W&B off, this checkout first."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if home:
        env["LOOPS_HOME"] = str(home)
    if threads:
        # Caps torch threads in the runner and in the servers its daemon starts: a
        # trainer and a sampler busy at once on a small CPU otherwise stall each
        # other's thread barriers. A home's first run starts the servers with its
        # cap; later runs reuse them.
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_command(args: list[str], *, cwd: Path, home: Path | str | None,
                threads: int | None = None, timeout: float | None = 900) -> float:
    """``python -m loops_runner *args``; its wall seconds, or ``RunFailed``."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "loops_runner", *args], cwd=cwd,
                            env=cli_env(home, threads), capture_output=True, text=True,
                            timeout=timeout)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RunFailed(f"{' '.join(args)} failed ({result.returncode}):\n"
                        f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return wall


def run_cli(args: list[str], run_dir: Path, *, cwd: Path, home: Path | str | None,
            threads: int | None = None, timeout: float = 900) -> float:
    """One run of ``python -m loops_runner *args`` writing into ``run_dir``; its wall seconds."""
    return run_command([*args, f"hydra.run.dir={run_dir}"], cwd=cwd, home=home,
                       threads=threads, timeout=timeout)


def run_recipe(work: Path, home: Path, recipe: str, overrides: list[str], name: str,
               timeout: float = 900, threads: int | None = None) -> list[dict]:
    """One ``+recipe=<recipe>`` run in ``work/runs/<name>``; its metrics.jsonl lines."""
    run_dir = work / "runs" / name
    run_cli([f"+recipe={recipe}", *overrides], run_dir, cwd=work, home=home, threads=threads,
            timeout=timeout)
    return read_metrics(run_dir)


def run_rl(work: Path, home: Path, overrides: list[str], name: str,
           timeout: float = 900, threads: int | None = None) -> list[dict]:
    return run_recipe(work, home, "rl", overrides, name, timeout=timeout, threads=threads)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def series(lines: list[dict], name: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every metrics line that logged ``name``."""
    return [(m["step"], m[name]) for m in lines if name in m]


def write_scratch_task(work: Path, prompts: int = 64) -> list[str]:
    """A reward module and prompt file in ``work``; the overrides that use them."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "digit_reward.py").write_text(DIGIT_REWARD)
    (work / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"Write some numbers, please ({i})."}) + "\n"
        for i in range(prompts)))
    return ["recipe.reward=digit_reward:score", "recipe.prompts=prompts.jsonl"]


def stop_daemon(home: Path, wait_s: float = 30.0) -> None:
    """Stop the home's daemon (and its servers) and wait for it to go, so the home
    can be deleted and the next measure has the CPU to itself."""
    from loops_runner.runner.local_daemon import find_control_plane, stop_control_plane
    from loops_runner.servers.launch import pid_running

    running = find_control_plane(home)
    if running is None or not stop_control_plane(home):
        return
    deadline = time.monotonic() + wait_s
    while pid_running(running.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
