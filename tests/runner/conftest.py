"""End-to-end runner fixtures: a private data home whose daemon is stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runner_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data home only the runner's own daemon uses (other suites start their own servers)."""
    from loops_runner.runner.local_daemon import find_control_plane, stop_control_plane

    home = tmp_path_factory.mktemp("runner_home")
    yield home
    running = find_control_plane(home)
    if stop_control_plane(home) and running is not None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(running.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)


def runner_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "loops_runner", *args]


def runner_env(home: Path) -> dict[str, str]:
    return {**os.environ, "LOOPS_HOME": str(home), "PYTHONPATH": str(REPO),
            "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def run_runner(*args: str, cwd: Path, home: Path,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(runner_command(*args), cwd=cwd, env=runner_env(home),
                          capture_output=True, text=True, timeout=timeout)


def kill_after_checkpoint(args: list[str], *, cwd: Path, home: Path, recipe: str, step: int,
                          env: dict[str, str] | None = None, timeout: float = 240) -> Path:
    """Start the CLI, SIGKILL it once a checkpoint at ``step`` or later is recorded; the
    run's ``run.json``."""
    import json
    import signal

    process = subprocess.Popen(runner_command(*args), cwd=cwd, env=env or runner_env(home),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_json = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = list((cwd / "outputs" / recipe).glob("*/run.json"))
        if found:
            run_json = found[0]
            checkpoints = json.loads(run_json.read_text()).get("checkpoints", [])
            if any(c["step"] >= step for c in checkpoints):
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert run_json is not None
    return run_json
