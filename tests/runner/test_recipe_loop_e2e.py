"""docs/recipes.md's recipes, run for real: the budget, retention and the loop hold for them.

The bare example never looks at the time budget and saves every couple of steps;
the runner still stops it in time, keeps two checkpoints and a small run.json,
and the same command continues it. The loop example (async) runs to the end and
prints what changed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.runner.conftest import REPO, run_runner

RECIPES_DOC = REPO / "docs" / "recipes.md"
_BLOCK = re.compile(r"```(python|yaml)\n# ((?:my_recipes|configs/recipe)/\S+)\n(.*?)```",
                    re.DOTALL)


def docs_recipe_files() -> dict[str, str]:
    """The files docs/recipes.md asks a user to write, by their path."""
    return {path: body for _, path, body in _BLOCK.findall(RECIPES_DOC.read_text())}


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's repository outside this one, holding the docs' recipes as written."""
    root = tmp_path_factory.mktemp("user_repo")
    files = docs_recipe_files()
    assert {"my_recipes/memorize.py", "configs/recipe/memorize.yaml",
            "my_recipes/memorize_loop.py", "configs/recipe/memorize_loop.yaml"} <= set(files)
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body)
    return root


def weights_on_disk(home: Path, record: dict) -> list[str]:
    run_ids = {c["path"].split(":", 2)[2].split("/")[0] for c in record["checkpoints"]}
    return sorted(p.name for run_id in run_ids
                  for p in (home / "runs" / run_id / "weights").glob("step-*"))


def test_a_bare_recipe_stops_at_its_time_budget_keeps_two_checkpoints_and_continues(
        user_repo: Path, runner_home: Path) -> None:
    run_dir = user_repo / "outputs" / "budget"
    args = ["--config-dir", "configs", "+recipe=memorize", "recipe.steps=100000",
            "checkpoints.keep_last=2", f"hydra.run.dir={run_dir}", "report=false"]
    started = time.monotonic()
    first = run_runner(*args, "time_budget_s=8", cwd=user_repo, home=runner_home, timeout=300)
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert elapsed < 90, elapsed  # provisioning included; the steps stop after ~8 s
    stopped = re.search(r"Time budget of 8 s reached at step (\d+); checkpoint saved", first.stdout)
    assert stopped is not None, first.stdout[-3000:]
    step = int(stopped.group(1))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "stopped"
    assert record["stop_reason"] == f"time_budget_s=8 reached at step {step}"
    assert (run_dir / "run.json").stat().st_size < 100_000
    # Saved every 2 steps, many times: only the newest two remain, on disk and in run.json.
    assert step > 6
    assert [c["step"] for c in record["checkpoints"]][-1] == step
    assert len(record["checkpoints"]) <= 2
    on_disk = weights_on_disk(runner_home, record)
    assert len(on_disk) <= 3 and f"step-{step:06d}" in on_disk
    assert all("rng" not in c for c in record["checkpoints"])

    # The same command with a larger budget continues from that checkpoint.
    again = run_runner(*args, "time_budget_s=12", cwd=user_repo, home=runner_home, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Resuming from step {step}" in again.stdout
    later = json.loads((run_dir / "run.json").read_text())
    assert later["attempts"] == 2 and later["checkpoints"][-1]["step"] > step
    assert len(weights_on_disk(runner_home, later)) <= 3


def test_the_loop_example_runs_to_the_end_and_prints_what_changed(
        user_repo: Path, runner_home: Path) -> None:
    run_dir = user_repo / "outputs" / "loop"
    result = run_runner("--config-dir", "configs", "+recipe=memorize_loop", "recipe.steps=12",
                        "recipe.eval_every=6", "recipe.save_every=4", f"hydra.run.dir={run_dir}",
                        "report=false", cwd=user_repo, home=runner_home, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(13))
    assert [m["step"] for m in lines if "eval/loss" in m] == [0, 6, 12]
    for name in ("optim/lr", "optim/grad_norm", "time/step_s"):
        assert all(name in m for m in lines[1:]), name
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["final_metrics"]["steps"] == 12
    assert [c["step"] for c in record["checkpoints"]] == [4, 8, 12]
    before, after = lines[0]["eval/loss"], lines[-1]["eval/loss"]
    assert after < before
    assert re.search(rf"eval/loss\s+│\s+{before:.3f}\s+│\s+{after:.3f}", result.stdout), \
        result.stdout[-2000:]
