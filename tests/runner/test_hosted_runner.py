"""The hosted path: ``backend=baseten`` against our control plane standing in for Baseten's.

What a paying user relies on: every ``service.*`` knob reaches the create
requests on every provisioning path; a run's trainer stops when the command
ends, however it ends, unless ``session.keep_warm``; a sweep reuses one
trainer and stops it at its end; ``loops-runner runs`` lists and stops runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runner.conftest import run_runner, runner_command, runner_env, write_user_recipe
from tests.runner.hosted import StandIn, stand_in_control_plane
from tests.sdk.proxy import FaultProxy

# A few SFT steps on little data: these tests are about the service, not learning.
QUICK_SFT = ["+recipe=sft", "recipe.dataset.num_examples=64", "recipe.dataset.eval_examples=8",
             "recipe.batch_size=8", "recipe.eval_every=0", "recipe.num_final_samples=0",
             "recipe.evaluators=[]", "report=false"]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    with stand_in_control_plane(tmp_path_factory.mktemp("stand_in_home")) as server:
        yield server


def hosted(stand_in: StandIn, url: str | None = None) -> list[str]:
    return ["backend=baseten", f"backend.base_url={url or stand_in.url}"]


def run_hosted(stand_in: StandIn, *args: str, cwd: Path, url: str | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**runner_env(cwd / "unused_home"), **stand_in.env()}
    return subprocess.run(runner_command(*args, *hosted(stand_in, url)), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def record_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def assert_stopped(stand_in: StandIn, run_id: str) -> None:
    """The run, its trainer (no other run on it) and its paired sampler are all STOPPED."""
    run = stand_in.run(run_id)
    assert run["status"] == "STOPPED", run
    deployment = stand_in.deployment(run["deployment_id"])
    assert deployment["status"]["name"] == "STOPPED", deployment
    if run["sampler"] is not None:
        sampler = stand_in.deployment(run["sampler"]["deployment_id"])
        assert sampler["status"]["name"] == "STOPPED", sampler


def test_every_service_knob_reaches_the_creates_on_each_path(tmp_path: Path,
                                                             stand_in: StandIn) -> None:
    proxy = FaultProxy(stand_in.url)
    knobs = ["service.team=local", "service.availability_model=spot",
             "service.scope=deployment", "service.replicas=2", "service.sampler_replicas=2",
             "service.with_sampler=true", "service.max_seq_len=512", "run_name=knobs",
             "wandb=offline", "wandb.client_run=true", "seed=7"]
    try:
        fresh = run_hosted(stand_in, *QUICK_SFT, *knobs, "max_steps=1",
                           "hydra.run.dir=fresh", cwd=tmp_path, url=proxy.url)
        assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
        # Resumed: the same run dir, more steps, from its checkpoint.
        resumed = run_hosted(stand_in, *QUICK_SFT, *knobs, "max_steps=2", "resume.fork=true",
                             "hydra.run.dir=fresh", cwd=tmp_path, url=proxy.url)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "Resuming from step 1" in resumed.stdout
        # init_from: a new run starting from the first one's weights.
        init = run_hosted(stand_in, *QUICK_SFT, *knobs, "max_steps=1",
                          f"init_from={tmp_path / 'fresh'}", "hydra.run.dir=init",
                          cwd=tmp_path, url=proxy.url)
        assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
        creates = proxy.seen("POST", "/v1/teams/")
    finally:
        proxy.close()

    # team: the name resolves to an id and every create goes under that team;
    # a non-default scope takes the /debug/ route, as the Baseten SDK does.
    trainers = [r.json() for r in creates if r.path.endswith("/loops/debug/trainers")]
    assert len(trainers) == 3
    for body in trainers:
        assert body["replicas"] == 2 and body["availability_model"] == "spot"
        assert body["scope"] == "deployment" and body["max_seq_len"] == 512
        assert body["name"] == "knobs" and body["seed"] == 7 and body["lora_rank"] == 16
    assert "path" not in trainers[0] and "path" not in trainers[2]
    assert trainers[1]["path"].startswith("bt://loops:") and "/weights/" in trainers[1]["path"]
    samplers = [r.json() for r in creates if r.path.endswith("/loops/samplers")]
    # with_sampler: the paired sampler is created with the trainer, with its replicas.
    assert len(samplers) == 3 and all(body["num_replicas"] == 2 for body in samplers)
    # wandb.client_run: the training client streamed its own W&B run (outside the run dir).
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    for name in ("fresh", "init"):
        record = record_of(tmp_path / name)
        assert record["replicas"] == 2 and record["trainer_seconds"] > 0
        for run_id in record["run_ids"]:
            assert_stopped(stand_in, run_id)


def _wait_for(path: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


FAILS = """
def run(ctx, cfg):
    assert ctx.training_client.run_id  # provisioned before the recipe starts
    raise RuntimeError("the recipe failed on purpose")
"""

WAITS = """
import pathlib
import time


def run(ctx, cfg):
    pathlib.Path("provisioned.flag").write_text(ctx.training_client.run_id)
    while True:
        time.sleep(0.1)
"""


def test_a_run_is_stopped_however_it_ends(tmp_path: Path, stand_in: StandIn) -> None:
    # Completed, and out of budget (the time budget ends it after its first step).
    done = run_hosted(stand_in, *QUICK_SFT, "max_steps=1", "hydra.run.dir=done", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stopped on the service" in done.stdout and "replica-seconds" in done.stdout
    budget = run_hosted(stand_in, *QUICK_SFT, "max_steps=40", "time_budget_s=0.01",
                        "hydra.run.dir=budget", cwd=tmp_path)
    assert budget.returncode == 0, budget.stdout[-3000:] + budget.stderr[-3000:]
    assert "Time budget of 0.01 s reached at step 1; checkpoint saved" in budget.stdout
    # Failed: the recipe raises after the trainer is up.
    write_user_recipe(tmp_path, "fails", FAILS, "")
    failed = run_hosted(stand_in, "--config-dir", "configs", "+recipe=fails", "report=false",
                        "hydra.run.dir=failed", cwd=tmp_path)
    assert failed.returncode != 0 and "failed on purpose" in failed.stderr
    # Interrupted: Ctrl-C (SIGINT), or `kill` (SIGTERM), while the recipe runs.
    write_user_recipe(tmp_path, "waits", WAITS, "")
    env = {**runner_env(tmp_path / "unused_home"), **stand_in.env()}
    for name, signum in (("interrupted", signal.SIGINT), ("killed", signal.SIGTERM)):
        flag = tmp_path / "provisioned.flag"
        flag.unlink(missing_ok=True)
        process = subprocess.Popen(
            runner_command("--config-dir", "configs", "+recipe=waits", "report=false",
                           f"hydra.run.dir={name}", *hosted(stand_in)),
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for(flag)
            process.send_signal(signum)
            output, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode != 0 and "stopped on the service" in output, output[-3000:]

    statuses = {}
    for name in ("done", "budget", "failed", "interrupted", "killed"):
        record = record_of(tmp_path / name)
        statuses[name] = record["status"]
        assert record["run_ids"], name
        for run_id in record["run_ids"]:
            assert_stopped(stand_in, run_id)
    assert statuses == {"done": "completed", "budget": "stopped", "failed": "failed",
                        "interrupted": "stopped", "killed": "stopped"}
    # What the run used: tokens per step and in total, in metrics.jsonl and run.json.
    lines = [json.loads(line) for line in
             (tmp_path / "done" / "metrics.jsonl").read_text().splitlines()]
    trained = [line for line in lines if "train/loss" in line]
    assert trained and all(line["tokens/trained"] > 0 for line in trained)
    record = record_of(tmp_path / "done")
    assert record["tokens"]["trained"] == lines[-1]["tokens/trained_total"] > 0


def test_keep_warm_keeps_the_trainer_and_runs_stop_ends_it(tmp_path: Path,
                                                           stand_in: StandIn) -> None:
    kept = run_hosted(stand_in, *QUICK_SFT, "max_steps=1", "session.keep_warm=true",
                      cwd=tmp_path)
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
    assert "kept warm" in kept.stdout
    run_dir = next((tmp_path / "outputs" / "sft").iterdir())
    record = record_of(run_dir)
    assert stand_in.run(record["run_id"])["status"] == "RUNNING"

    env = {**runner_env(tmp_path / "unused_home"), **stand_in.env()}
    cli = ["loops_runner.cli"]

    def loops_runner(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([runner_command()[0], "-m", *cli, *args, "--base-url",
                               stand_in.url], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    listed = loops_runner("runs", "list")
    assert listed.returncode == 0 and record["run_id"] in listed.stdout, listed.stderr
    shown = loops_runner("runs", "show", str(run_dir))
    assert shown.returncode == 0 and "RUNNING" in shown.stdout and "/weights/" in shown.stdout
    # Checkpoints of a hosted run list and download the same way as locally.
    checkpoints = loops_runner("checkpoints", "list", str(run_dir))
    assert checkpoints.returncode == 0 and "bt://loops:" in checkpoints.stdout
    stopped = loops_runner("runs", "stop", "--session", record["session_id"])
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert_stopped(stand_in, record["run_id"])
    assert record["run_id"] not in loops_runner("runs", "list").stdout
    again = loops_runner("runs", "stop", record["run_id"])
    assert again.returncode == 0 and "already STOPPED" in again.stdout


def test_a_sweep_reuses_its_trainer_and_stops_it_at_the_end(tmp_path: Path,
                                                            stand_in: StandIn) -> None:
    result = run_hosted(stand_in, "-m", *QUICK_SFT, "max_steps=1", "seed=0,1",
                        "hydra.sweep.dir=sweep", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stays up for the sweep's next jobs" in result.stdout
    assert "Sweep used:" in result.stdout
    records = [record_of(run_dir) for run_dir in (tmp_path / "sweep").iterdir()
               if (run_dir / "run.json").is_file()]
    assert len(records) == 2
    runs = [stand_in.run(record["run_id"]) for record in records]
    # The second job reused the first one's trainer ...
    assert runs[0]["deployment_id"] == runs[1]["deployment_id"]
    # ... and the sweep's end stopped both runs and the trainer.
    for record in records:
        assert_stopped(stand_in, record["run_id"])


def test_dry_run_shows_the_knobs_and_bad_ones_are_refused(tmp_path: Path) -> None:
    planned = run_runner("+recipe=sft", "backend=baseten", "dry_run=true",
                         "service.replicas=3", "service.availability_model=spot",
                         cwd=tmp_path, home=tmp_path / "home")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "service.replicas" in planned.stdout and "spot" in planned.stdout
    assert "stop its trainers and samplers" in planned.stdout
    for override, expected in (("service.replicas=0", "service.replicas"),
                               ("service.availability_model=cheap", "'dedicated' or 'spot'"),
                               ("service.scope=anywhere", "service.scope"),
                               ("wandb.client_run=true", "wandb.client_run")):
        refused = run_runner("+recipe=sft", "backend=baseten", "dry_run=true", override,
                             cwd=tmp_path, home=tmp_path / "home")
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr[-2000:]
