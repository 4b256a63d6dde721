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


def write_user_recipe(root: Path, name: str, source: str, yaml_body: str) -> None:
    """A recipe module in ``root/team_recipes/`` with its YAML in ``root/configs/recipe/``.

    Run it with ``--config-dir configs +recipe=<name>`` from ``root``.
    """
    package = root / "team_recipes"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / f"{name}.py").write_text(source)
    (root / "configs" / "recipe").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "recipe" / f"{name}.yaml").write_text(
        f"# Run: python -m loops_runner --config-dir configs +recipe={name}\n"
        f"_target_: team_recipes.{name}.run\n{yaml_body}")

