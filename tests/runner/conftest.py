"""End-to-end runner fixtures: a private data home whose daemon is stopped afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runner_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data home only the runner's own daemon uses (other suites start their own servers)."""
    with private_home(tmp_path_factory, "runner_home") as home:
        yield home


@contextmanager
def private_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A fresh data home; its daemon (if one was started) is stopped at the end."""
    home = tmp_path_factory.mktemp(name)
    try:
        yield home
    finally:
        stop_daemon(home)


def stop_daemon(home: Path) -> None:
    """Stop the runner's daemon of ``home`` (and its servers); wait until it is gone."""
    from loops_runner.runner.local_daemon import find_control_plane, stop_control_plane

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
            "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
            # Ray (the sweeps' launcher) must not try to phone home from tests.
            "RAY_USAGE_STATS_ENABLED": "0"}


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


def trainer_urls(home: Path, run_dirs: Iterable[Path]) -> set[str]:
    """The trainer URL that served each run dir's run, asked from the daemon of ``home``."""
    import httpx

    from loops_runner.runner.local_daemon import find_control_plane

    daemon = find_control_plane(home)
    assert daemon is not None
    headers = {"Authorization": f"Api-Key {daemon.api_key}"}
    urls = set()
    for run_dir in run_dirs:
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        response = httpx.get(f"{daemon.url}/v1/loops/runs/{run_id}", headers=headers)
        assert response.status_code == 200, response.text
        urls.add(response.json()["run"]["base_url"])
    return urls


def kill_after_checkpoint(args: list[str], *, cwd: Path, home: Path, recipe: str, step: int,
                          env: dict[str, str] | None = None, timeout: float = 240) -> Path:
    """Start the CLI, SIGKILL it once a checkpoint at ``step`` or later is recorded; the
    run's ``run.json``."""
    import signal

    return signal_after_checkpoint(args, cwd=cwd, home=home, recipe=recipe, step=step,
                                   env=env, timeout=timeout, signum=signal.SIGKILL)[0]


def signal_after_checkpoint(args: list[str], *, cwd: Path, home: Path, recipe: str, step: int,
                            signum: int, env: dict[str, str] | None = None,
                            timeout: float = 240, runs_glob: str | None = None,
                            ) -> tuple[Path, subprocess.Popen[str]]:
    """Start the CLI, send it ``signum`` once a checkpoint at ``step`` or later is recorded;
    the run's ``run.json`` and the finished process (its output in ``process.output``).

    ``runs_glob`` (under ``cwd``) finds the run records; a sweep's live in its sweep dir.
    """
    import json

    process = subprocess.Popen(runner_command(*args), cwd=cwd, env=env or runner_env(home),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Read the output as it comes, so a full pipe never blocks the run.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    run_json = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = sorted(cwd.glob(runs_glob or f"outputs/{recipe}/*/run.json"))
        if found:
            run_json = found[0]
            checkpoints = json.loads(run_json.read_text()).get("checkpoints", [])
            if any(c["step"] >= step for c in checkpoints):
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be signalled"
    process.send_signal(signum)
    process.wait(timeout=120)
    reader.join(timeout=30)
    process.output = "".join(lines)  # type: ignore[attr-defined]
    assert run_json is not None
    return run_json, process
