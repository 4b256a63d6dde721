"""Running a recipe through the real CLI and reading its metrics, for the learning checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], workdir: Path, home: str | None) -> tuple[float, Path]:
    """Run ``python -m loops_runner *args`` in ``workdir``; return wall seconds and run dir."""
    run_dir = workdir / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    if home:
        env["LOOPS_HOME"] = home
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "loops_runner", *args,
                             f"hydra.run.dir={run_dir}"], cwd=workdir, env=env, text=True,
                            capture_output=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"run failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                 f"{result.stderr[-3000:]}")
    return wall, run_dir


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def series(lines: list[dict], name: str) -> list[tuple[int, float]]:
    return [(m["step"], m[name]) for m in lines if name in m]
