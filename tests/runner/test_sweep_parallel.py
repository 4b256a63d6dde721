"""Parallel sweeps through the real CLI: Hydra's joblib and Ray launchers on the local stack.

All tests share one fresh data home, so the first sweep's jobs are the ones that
ask for the daemon and the trainer at the same moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control_plane.helpers import server_pids
from tests.runner.conftest import (
    private_home,
    run_runner,
    runner_command,
    runner_env,
    trainer_urls,
)

# Tiny jobs: a few steps, no periodic eval, no final sampling.
TINY_SFT = ["+recipe=sft", "recipe.max_steps=3", "recipe.eval_every=0", "recipe.save_every=0",
            "recipe.num_final_samples=0", "recipe.dataset.num_examples=200",
            "recipe.dataset.eval_examples=16", "recipe.batch_size=8",
            "recipe.evaluators.0.num_prompts=7"]
JOBLIB = ["hydra/launcher=joblib"]
# A local Ray instance of 2 CPUs (one job each), without its dashboard.
RAY = ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
       "+hydra.launcher.ray.init.include_dashboard=false"]


@pytest.fixture(scope="module")
def sweep_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_home(tmp_path_factory, "sweep_home") as home:
        yield home


def daemon_starts(home: Path) -> int:
    """How many times a control-plane daemon was spawned for this home (one log line each)."""
    log = home / "logs" / "control-plane.log"
    return sum(line.startswith("$ ") for line in log.read_text().splitlines())


def check_one_daemon_one_trainer(home: Path, run_dirs: list[Path]) -> None:
    assert daemon_starts(home) == 1
    assert len(server_pids(home, ("control-plane",))) == 1
    assert len(server_pids(home, ("trainer",))) == 1
    assert len(trainer_urls(home, run_dirs)) == 1


def sweep_lines(sweep_dir: Path) -> list[dict]:
    # Every line must be one complete JSON object, whatever the finishing order.
    return [json.loads(line) for line in (sweep_dir / "sweep.jsonl").read_text().splitlines()]


def finished_sweep(result: subprocess.CompletedProcess[str], sweep_dir: Path,
                   jobs: int) -> tuple[list[Path], list[dict]]:
    """Check a sweep that ended well; return its run dirs and their run records."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = sweep_lines(sweep_dir)
    assert sorted(line["job"] for line in lines) == list(range(jobs))  # one line per job
    assert all(line["status"] == "completed" and line["final_metrics"]["steps"] >= 1
               for line in lines)
    run_dirs = sorted({Path(line["run_dir"]) for line in lines})
    assert len(run_dirs) == jobs
    # Every job's run dir, and nothing else but the sweep report's plots.
    assert sorted(p for p in sweep_dir.iterdir()
                  if p.is_dir() and p.name != "report_plots") == run_dirs
    assert (sweep_dir / "report.html").is_file()
    records = [json.loads((d / "run.json").read_text()) for d in run_dirs]
    assert all(record["status"] == "completed" for record in records)
    assert len({record["run_id"] for record in records}) == jobs  # no two jobs share a run
    summary = result.stdout[result.stdout.index("sweep summary"):]
    for line in lines:
        assert next(o for o in line["overrides"] if o.startswith("recipe.")) in summary
    return run_dirs, records


def job_run_json(sweep_dir: Path, override: str) -> Path | None:
    """The run.json path of the job with ``override`` (long run dir names end in a hash)."""
    for overrides in sweep_dir.glob("*/.hydra/overrides.yaml"):
        if f"- {override}\n" in overrides.read_text():
            return overrides.parent.parent / "run.json"
    return None


def ran_in_parallel(records: list[dict]) -> bool:
    """Every job had started before the first one finished."""
    return max(r["started_at"] for r in records) < min(r["finished_at"] for r in records)


def test_joblib_sweep_runs_four_jobs_at_once_on_one_daemon_and_trainer(
        tmp_path: Path, sweep_home: Path) -> None:
    assert not (sweep_home / "logs").exists()  # no daemon yet: the four jobs race to start it
    result = run_runner("-m", *JOBLIB, "hydra.launcher.n_jobs=4", *TINY_SFT,
                        "recipe.learning_rate=1e-3,2e-3,3e-3,5e-3", "hydra.sweep.dir=sweep",
                        cwd=tmp_path, home=sweep_home, timeout=240)
    run_dirs, records = finished_sweep(result, tmp_path / "sweep", jobs=4)
    assert ran_in_parallel(records)
    check_one_daemon_one_trainer(sweep_home, run_dirs)


def test_ray_sweep_runs_two_jobs_on_a_local_ray_instance(tmp_path: Path,
                                                         sweep_home: Path) -> None:
    result = run_runner("-m", *RAY, *TINY_SFT, "recipe.learning_rate=1e-3,4e-3",
                        "hydra.sweep.dir=sweep", cwd=tmp_path, home=sweep_home, timeout=240)
    run_dirs, records = finished_sweep(result, tmp_path / "sweep", jobs=2)
    assert "Ray Launcher is launching 2 jobs" in result.stdout + result.stderr
    assert ran_in_parallel(records)
    check_one_daemon_one_trainer(sweep_home, run_dirs)


def test_killed_parallel_sweep_resumes_only_its_unfinished_jobs(tmp_path: Path,
                                                                sweep_home: Path) -> None:
    # Job 0 is short, job 1 long (checkpoints every 10 steps), job 2 fails on its config.
    # The kill comes once job 0 is done and job 1 has a checkpoint: job 1 then still has
    # most of its steps to go, however fast the machine.
    args = ["-m", *JOBLIB, "hydra.launcher.n_jobs=2", *TINY_SFT, "recipe.save_every=10",
            "recipe.epochs=6", "recipe.max_steps=3,120,-1", "hydra.sweep.dir=sweep"]
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(runner_command(*args), cwd=tmp_path, env=runner_env(sweep_home),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    long_run = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        done = {line["job"] for line in sweep_lines(sweep_dir)} \
            if (sweep_dir / "sweep.jsonl").is_file() else set()
        long_run = job_run_json(sweep_dir, "recipe.max_steps=120")
        saved = json.loads(long_run.read_text()).get("checkpoints", []) \
            if long_run and long_run.is_file() else []
        if 0 in done and any(c["step"] >= 10 for c in saved):
            break
        time.sleep(0.1)
    assert process.poll() is None, "the sweep ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the command and its joblib workers, like Ctrl-C
    process.wait()
    assert long_run is not None and json.loads(long_run.read_text())["status"] == "running"

    resumed = run_runner(*args[:-1], f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                         home=sweep_home, timeout=240)
    assert resumed.returncode == 1  # job 2 failed again; the others were not held up by it
    assert "Resuming from step" in resumed.stdout
    records = {line["job"]: json.loads((Path(line["run_dir"]) / "run.json").read_text())
               for line in sweep_lines(sweep_dir) if line["status"] == "completed"}
    assert records[0]["attempts"] == 1  # finished before the kill: not run again
    assert records[1]["attempts"] == 2 and records[1]["final_metrics"]["steps"] == 120
    jobs = [line["job"] for line in sweep_lines(sweep_dir)]
    assert jobs.count(0) == 1 and jobs.count(1) == 1  # the finished job's line is not repeated
    assert jobs.count(2) in (1, 2)  # one line per attempt of the failing job
    assert all("recipe.max_steps" in line["error"] for line in sweep_lines(sweep_dir)
               if line["job"] == 2)
    summary = resumed.stdout[resumed.stdout.index("sweep summary"):]
    # One row per job with its outcome (rich folds the long overrides cell over several
    # lines, so the rows are found by their job number, not by the overrides text).
    rows = [[cell.strip() for cell in line.split("│")[1:4]] for line in summary.splitlines()
            if line.startswith("│") and line.split("│")[1].strip().isdigit()]
    assert [(job, status) for job, _, status in rows] == [
        ("0", "completed"), ("1", "completed"), ("2", "failed")], summary
    assert [overrides.startswith("recipe.max_steps=") for _, overrides, _ in rows] == [True] * 3


BROKEN_RECIPE = '''
from pydantic import BaseModel, field_validator


class NeedsTwoArguments(Exception):  # unpickling calls it with one: it cannot cross processes
    def __init__(self, code, where):
        super().__init__(f"code {code} at {where}")


class Config(BaseModel):
    fail: bool = False

    @field_validator("fail")
    @classmethod
    def fail_if_asked(cls, value):
        if value:
            raise NeedsTwoArguments(7, "config check")
        return value


def run(ctx, cfg):
    return {}
'''


def test_a_job_error_that_cannot_cross_processes_fails_only_its_job(tmp_path: Path,
                                                                    sweep_home: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN_RECIPE)
    (tmp_path / "configs" / "recipe").mkdir(parents=True)
    (tmp_path / "configs" / "recipe" / "broken.yaml").write_text(
        "# Run: python -m loops_runner --config-dir configs +recipe=broken\n"
        "_target_: broken.py\nfail: false\n")
    result = run_runner("--config-dir", "configs", "-m", *JOBLIB, "hydra.launcher.n_jobs=2",
                        "+recipe=broken", "recipe.fail=false,true", "dry_run=true",
                        "hydra.sweep.dir=sweep", cwd=tmp_path, home=sweep_home, timeout=120)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "BrokenProcessPool" not in result.stderr  # the other job's result was not lost
    lines = {line["job"]: line for line in sweep_lines(tmp_path / "sweep")}
    assert lines[0]["status"] == "completed"
    assert lines[1]["status"] == "failed"
    assert "NeedsTwoArguments: code 7 at config check" in lines[1]["error"]
    assert "NeedsTwoArguments: code 7 at config check" in result.stderr  # Hydra reports it
    summary = result.stdout[result.stdout.index("sweep summary"):]
    assert "recipe.fail=False" in summary and "recipe.fail=True" in summary
