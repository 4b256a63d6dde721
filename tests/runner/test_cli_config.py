"""The Hydra CLI's config handling, end to end, without servers (dry runs and errors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOPS_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "loops_runner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def test_missing_recipe_lists_recipes(workdir: Path, loops_home: Path) -> None:
    result = run_cli(cwd=workdir, home=loops_home)
    assert result.returncode == 2
    assert "no recipe chosen" in result.stderr and "sft" in result.stderr
    assert "+recipe=sft" in result.stderr


def test_typo_in_override_suggests_nearest_key(workdir: Path, loops_home: Path) -> None:
    result = run_cli("+recipe=sft", "recipe.learnin_rate=0.1", cwd=workdir, home=loops_home)
    assert result.returncode != 0
    assert "Unknown config key 'recipe.learnin_rate' (value 0.1)" in result.stderr
    assert "Did you mean 'recipe.learning_rate'?" in result.stderr


def test_typo_in_added_key_and_bad_value_are_named(workdir: Path, loops_home: Path) -> None:
    result = run_cli("+recipe=sft", "+recipe.dataset.num_exemples=5", cwd=workdir,
                     home=loops_home)
    assert result.returncode == 2
    assert "unknown key 'recipe.dataset.num_exemples' (value 5)" in result.stderr
    assert "did you mean 'recipe.dataset.num_examples'?" in result.stderr

    result = run_cli("+recipe=sft", "recipe.lr_schedule=exponential", cwd=workdir,
                     home=loops_home)
    assert result.returncode == 2
    assert "'recipe.lr_schedule' = 'exponential'" in result.stderr
    assert "'constant', 'linear' or 'cosine'" in result.stderr

    result = run_cli("+recipe=sft", "model.rank=0", cwd=workdir, home=loops_home)
    assert result.returncode == 2
    assert "'model.rank' = 0" in result.stderr and "greater than or equal to 1" in result.stderr


def test_cfg_job_shows_the_config(workdir: Path, loops_home: Path) -> None:
    result = run_cli("+recipe=sft", "--cfg", "job", cwd=workdir, home=loops_home)
    assert result.returncode == 0, result.stderr
    assert "base_model: tiny" in result.stdout
    assert "_target_: loops_runner.recipes.sft.run" in result.stdout


def test_dry_run_prints_plan_and_starts_nothing(workdir: Path, loops_home: Path,
                                                tiny_model_dir: Path) -> None:
    result = run_cli("+recipe=sft", "dry_run=true", "recipe.max_steps=12", cwd=workdir,
                     home=loops_home)
    assert result.returncode == 0, result.stderr
    assert "dry run: plan" in result.stdout
    assert str(tiny_model_dir) in result.stdout.replace("\n", "") or "tiny ->" in result.stdout
    assert "12" in result.stdout and "estimated tokens" in result.stdout
    assert not (loops_home / "runner" / "control_plane.json").exists()
    assert not (workdir / "outputs" / "sft" / "run.json").exists()


def test_user_recipe_by_dotted_path_and_file(workdir: Path, loops_home: Path) -> None:
    (workdir / "my_recipes").mkdir()
    (workdir / "my_recipes" / "__init__.py").write_text("")
    (workdir / "my_recipes" / "echo.py").write_text(
        "from pydantic import BaseModel\n"
        "class Config(BaseModel):\n    greeting: str = 'hi'\n"
        "def plan(cfg, tokenizer, budget):\n    return {'greeting': cfg.greeting * 2}\n"
        "def run(ctx, cfg):\n    return {}\n")
    (workdir / "conf" / "recipe").mkdir(parents=True)
    (workdir / "conf" / "recipe" / "echo.yaml").write_text(
        "_target_: my_recipes.echo.run\ngreeting: hello\n")
    result = run_cli("--config-dir", "conf", "+recipe=echo", "dry_run=true", cwd=workdir,
                     home=loops_home)
    assert result.returncode == 0, result.stderr
    assert "hellohello" in result.stdout
    result = run_cli("+recipe=sft", f"recipe._target_={workdir / 'my_recipes' / 'echo.py'}:run",
                     "dry_run=true", cwd=workdir, home=loops_home)
    assert result.returncode == 2  # the sft knobs are not this recipe's schema
    assert "unknown key 'recipe.batch_size'" in result.stderr


def test_daemon_status_and_stop_without_a_daemon(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "loops_runner.cli", "daemon"]
    status = subprocess.run([*command, "status", "--home", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 1 and "no control-plane daemon is running" in status.stdout
    stop = subprocess.run([*command, "stop", "--home", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert stop.returncode == 0 and "no control-plane daemon is running" in stop.stdout
