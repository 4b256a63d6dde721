"""Runs of one base model share a trainer process (issue #17), against real servers.

One control plane (own data home) with ``--runs-per-trainer 3`` serves the
module, so the cap is reached cheaply; the tests run in file order: three
creates at once share one process, a fourth gets a second one, shared runs
train apart, deactivating one run spares the others, and a crash of the
shared process is reported on every run on it.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.control_plane.helpers import (
    ControlPlaneProcess,
    pid_alive,
    server_pids,
    tiny_control_plane,
    wait_for,
)
from tests.control_plane.test_cp_provisioning import create_run, deployment, new_session, ok
from tests.trainer.trainer_helpers import Trainer, datum

CAP = 3


@dataclass
class Shared:
    """What the earlier tests leave to the later ones."""

    session_id: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory,
       tiny_model_dir: Path) -> Iterator[ControlPlaneProcess]:
    with tiny_control_plane(tmp_path_factory, tiny_model_dir, "cp_place_home",
                            extra=["--runs-per-trainer", str(CAP)]) as process:
        yield process


@pytest.fixture(scope="module")
def shared() -> Shared:
    return Shared()


def trainer_pids(cp: ControlPlaneProcess) -> list[int]:
    return server_pids(cp.home, ("trainer",))


def trainer_of(run: dict[str, Any]) -> Trainer:
    return Trainer(run["base_url"], run["id"])


def adapter(trainer: Trainer) -> dict[str, torch.Tensor]:
    tensors, _ = trainer.tensors("adapter")
    return tensors


def train(trainer: Trainer, tokens: list[int], steps: int) -> None:
    for _ in range(steps):
        trainer.forward_backward([datum(tokens)])
        trainer.optim_step(learning_rate=5e-2)


def test_runs_created_at_once_share_one_trainer(cp: ControlPlaneProcess, api: httpx.Client,
                                                shared: Shared) -> None:
    shared.session_id = new_session(api)
    with ThreadPoolExecutor(CAP) as pool:
        runs = list(pool.map(lambda _: create_run(api, shared.session_id), range(CAP)))
    shared.runs = runs
    assert len({run["deployment_id"] for run in runs}) == 1, runs
    assert sorted(run["reused"] for run in runs) == [False] + [True] * (CAP - 1)
    assert all(run["status"] == "RUNNING" for run in runs)
    status = deployment(api, runs[0]["deployment_id"])
    assert sorted(status["run_ids"]) == sorted(run["id"] for run in runs)
    # One process, started once.
    assert trainer_pids(cp) == [status["pid"]]
    log = cp.home / "logs" / f"trainer-{status['id']}.log"
    assert log.read_text().count("LOOPS_SERVER_URL=") == 1


def test_cap_plus_one_gets_a_second_trainer(cp: ControlPlaneProcess, api: httpx.Client,
                                            shared: Shared) -> None:
    extra = create_run(api, shared.session_id)
    assert extra["deployment_id"] != shared.runs[0]["deployment_id"]
    assert extra["reused"] is False
    assert len(trainer_pids(cp)) == 2
    # Not needed later: the run's own deactivation stops its (unshared) process.
    ok(api.post(f"/v1/loops/deployments/{extra['deployment_id']}/deactivate"))
    wait_for(lambda: len(trainer_pids(cp)) == 1, 20.0, message="second trainer exits")


def test_shared_runs_train_independently(cp: ControlPlaneProcess, api: httpx.Client,
                                         shared: Shared) -> None:
    first, second = (trainer_of(run) for run in shared.runs[:2])
    for trainer in (first, second):
        trainer.init(rank=8, seed=7)  # the same start, so only the data can tell them apart
    start_first, start_second = adapter(first), adapter(second)
    assert start_first.keys() == start_second.keys()
    assert all(torch.equal(value, start_second[key]) for key, value in start_first.items())
    train(first, [11, 42, 7, 99, 23, 5, 64, 18], 3)
    train(second, [3, 141, 59, 26, 53, 58, 97, 93], 3)
    first_weights, second_weights = adapter(first), adapter(second)
    assert any(not torch.equal(first_weights[key], second_weights[key])
               for key in first_weights)

    # A checkpoint and more training of one run leave the other as it was.
    saved = first.op("save_state", {"name": "shared-1"})
    train(first, [11, 42, 7, 99, 23, 5, 64, 18], 2)
    assert all(torch.equal(value, second_weights[key])
               for key, value in adapter(second).items())
    assert second.policy_version() == 3 and first.policy_version() == 5
    listed = ok(api.get("/v1/loops/checkpoints", params={"run_id": second.run_id}))
    assert listed["checkpoints"] == []
    listed = ok(api.get("/v1/loops/checkpoints", params={"run_id": first.run_id}))
    assert [c["path"].rstrip("/") for c in listed["checkpoints"]] == [saved["path"].rstrip("/")]

    # One paired sampler process follows both runs, each with its own live weights.
    samplers = [ok(api.post("/v1/loops/samplers", json={
        "session_id": shared.session_id, "run_id": run["id"]}))["sampler"]
        for run in shared.runs[:2]]
    assert samplers[0]["deployment_id"] == samplers[1]["deployment_id"]
    versions = {}
    for trainer in (first, second):
        published = trainer.op("save_weights_for_sampler", {"name": "pub", "bump_version": True})
        versions[trainer.run_id] = int(published["version"])
    for trainer in (first, second):
        answer = httpx.post(f"{samplers[0]['base_url']}/sample", timeout=120.0, json={
            "prompt": [11, 42, 7], "max_tokens": 2, "temperature": 0.0},
            headers={"X-Run-Id": trainer.run_id,
                     "X-Min-Policy-Version": str(versions[trainer.run_id])})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-trainers-policy-version"] == str(versions[trainer.run_id])


def test_deactivating_one_run_spares_the_others(cp: ControlPlaneProcess, api: httpx.Client,
                                                shared: Shared) -> None:
    deployment_id = shared.runs[0]["deployment_id"]
    pid = deployment(api, deployment_id)["pid"]
    refused = api.post(f"/v1/loops/deployments/{deployment_id}/deactivate")
    assert refused.status_code == 409, refused.text
    assert refused.json()["details"]["reason"] == "DEPLOYMENT_SHARED"
    assert "run_id" in refused.json()["detail"]
    wrong = api.post(f"/v1/loops/deployments/{deployment_id}/deactivate",
                     params={"run_id": "run-not-here"})
    assert wrong.status_code == 422 and "run-not-here" in wrong.json()["detail"]

    gone = shared.runs[2]
    answer = ok(api.post(f"/v1/loops/deployments/{deployment_id}/deactivate",
                         params={"run_id": gone["id"]}))["deployment"]
    assert answer["status"]["name"] == "RUNNING"
    assert ok(api.get(f"/v1/loops/runs/{gone['id']}"))["run"]["status"] == "STOPPED"
    assert pid_alive(pid)
    survivor = trainer_of(shared.runs[0])
    train(survivor, [5, 6, 7, 8, 9, 10, 11, 12], 1)
    assert survivor.policy_version() == 6


def test_crash_of_shared_trainer_fails_every_run_and_recovers(
        cp: ControlPlaneProcess, api: httpx.Client, shared: Shared) -> None:
    deployment_id = shared.runs[0]["deployment_id"]
    pid = deployment(api, deployment_id)["pid"]
    os.kill(pid, signal.SIGKILL)

    def run_states() -> list[dict[str, Any]]:
        return [ok(api.get(f"/v1/loops/runs/{run['id']}"))["run"] for run in shared.runs]

    states = wait_for(lambda: (found := run_states()) and all(
        run["status"] != "RUNNING" for run in found) and found, 15.0,
        message="runs on the killed trainer leave RUNNING")
    by_id = {run["id"]: run for run in states}
    for run in shared.runs[:2]:  # the two open ones report the crash
        assert by_id[run["id"]]["status"] == "FAILED"
        assert "SIGKILL" in by_id[run["id"]]["reason"]
    assert by_id[shared.runs[2]["id"]]["status"] == "STOPPED"  # deactivated before

    # The restarted process takes new runs (the failed ones hold no slot); it no
    # longer knows the old runs and says so instead of hanging.
    fresh = create_run(api, shared.session_id)
    assert fresh["deployment_id"] == deployment_id and fresh["reused"] is True
    current = deployment(api, deployment_id)
    assert current["status"]["name"] == "RUNNING" and current["pid"] != pid
    trainer = trainer_of(fresh)
    trainer.init(rank=8)
    train(trainer, [1, 2, 3, 4, 5, 6, 7, 8], 1)
    old = trainer_of(shared.runs[0]).submit("optim_step", {"adam_params": {
        "learning_rate": 1e-3}}, key=uuid.uuid4().hex)
    assert old.status_code == 422 and "unknown run" in old.text
