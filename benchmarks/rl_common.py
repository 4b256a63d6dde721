"""Running a recipe (``rl`` by default) through the real CLI from a benchmark, with a
scratch reward for ``rl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A reward that differs between samples of a random or pretrained model alike, so
# every step trains (the share of digit characters in the reply).
DIGIT_REWARD = '''
def score(prompt, completion, **row):
    return sum(c.isdigit() for c in completion) / max(1, len(completion))
'''


def write_scratch_task(work: Path, prompts: int = 64) -> list[str]:
    """A reward module and prompt file in ``work``; the overrides that use them."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "digit_reward.py").write_text(DIGIT_REWARD)
    (work / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": f"Write some numbers, please ({i})."}) + "\n"
        for i in range(prompts)))
    return ["recipe.reward=digit_reward:score", "recipe.prompts=prompts.jsonl"]


def run_rl(work: Path, home: Path, overrides: list[str], name: str,
           timeout: float = 900, threads: int | None = None) -> list[dict]:
    """One ``+recipe=rl`` CLI run in its own run dir; its metrics.jsonl lines."""
    return run_recipe(work, home, "rl", overrides, name, timeout=timeout, threads=threads)


def run_recipe(work: Path, home: Path, recipe: str, overrides: list[str], name: str,
               timeout: float = 900, threads: int | None = None) -> list[dict]:
    """One ``+recipe=<recipe>`` CLI run in its own run dir; its metrics.jsonl lines.

    ``threads`` caps torch threads in the runner and the servers it starts (a
    trainer and a sampler busy at the same time on a small CPU otherwise stall
    each other's thread barriers). The servers are the home's daemon's: the
    first run in a home starts them with its thread cap, later runs reuse them.
    """
    run_dir = work / "runs" / name
    command = [sys.executable, "-m", "loops_runner", f"+recipe={recipe}", *overrides,
               f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "LOOPS_HOME": str(home), "PYTHONPATH": str(REPO),
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stop_daemon(home: Path) -> None:
    from loops_runner.runner.local_daemon import stop_control_plane

    stop_control_plane(home)
