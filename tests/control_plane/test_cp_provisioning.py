"""The control plane with real trainer and sampler processes (tiny model).

One control plane subprocess (own data home, API key) serves the module; the
trainer it provisions for ``trained_run`` is shared by the tests below, which
run in file order: the round trip, paired and standalone samplers, reuse,
then killing that trainer, and last a restart of the control plane itself.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from loops_runner.storage.layout import checkpoint_dir
from loops_runner.storage.weight_sync import paired_sampler_url
from loops_runner.wire.paths import parse_bt_path
from tests.control_plane.helpers import (
    ControlPlaneProcess,
    child_server_pids,
    pid_alive,
    start_control_plane,
    tiny_control_plane,
    wait_for,
)

API_KEY = "prov-key-91c2"
PROMPT = [11, 42, 7, 99, 23, 5, 64, 18]
TARGETS = [42, 7, 99, 23, 5, 64, 18, 31]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory,
       tiny_model_dir: Path) -> Iterator[ControlPlaneProcess]:
    with tiny_control_plane(tmp_path_factory, tiny_model_dir, "cp_prov_home",
                            api_key=API_KEY) as process:
        yield process


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, f"{response.status_code}: {response.text}"
    return response.json()


class Trainer:
    """The trainer protocol, spoken by hand (submit 202 -> long-poll)."""

    def __init__(self, base_url: str, run_id: str) -> None:
        self.run_id = run_id
        self.http = httpx.Client(base_url=base_url, timeout=120.0,
                                 headers={"X-Run-Id": run_id})

    def op(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        submit = self.http.post(f"/{name}", json={"run_id": self.run_id, **body},
                                headers={"Idempotency-Key": uuid.uuid4().hex})
        assert submit.status_code == 202, f"{name}: {submit.status_code} {submit.text}"
        operation_id = submit.json()["operation_id"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            poll = self.http.get(f"/operations/{operation_id}")
            if poll.status_code == 408:
                continue
            body = ok(poll)
            assert body["status"] == "done", body
            return body["result"]
        raise AssertionError(f"{name} did not finish")


def datum() -> dict[str, Any]:
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": PROMPT}]},
            "loss_fn_inputs": {
                "target_tokens": {"data": TARGETS, "dtype": "int64", "shape": [len(TARGETS)]},
                "weights": {"data": [1.0] * len(TARGETS), "dtype": "float32",
                            "shape": [len(TARGETS)]}}}


def train_steps(trainer: Trainer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        result = trainer.op("forward_backward", {"data": [datum()], "loss_fn": "cross_entropy"})
        losses.append(float(result["metrics"].get("loss:sum", result.get("loss", 0.0)))
                      if "metrics" in result else float(result["loss"]))
        trainer.op("optim_step", {"adam_params": {"learning_rate": 5e-2}})
    return losses


def forward_loss(trainer: Trainer) -> float:
    result = trainer.op("forward", {"data": [datum()], "loss_fn": "cross_entropy"})
    logprobs = result["loss_fn_outputs"][0]["logprobs"]["data"]
    return -sum(logprobs) / len(logprobs)


@dataclass
class TrainedRun:
    session_id: str
    run: dict[str, Any]
    trainer: Trainer
    version: int = 0


def create_run(api: httpx.Client, session_id: str, **extra: Any) -> dict[str, Any]:
    body = {"session_id": session_id, "base_model": "tiny", "lora_rank": 8, "replicas": 1,
            "availability_model": "dedicated", **extra}
    return ok(api.post("/v1/loops/trainers", json=body))["run"]


def new_session(api: httpx.Client) -> str:
    return ok(api.post("/v1/loops/sessions"))["session"]["id"]


def deployment(api: httpx.Client, deployment_id: str) -> dict[str, Any]:
    return ok(api.get(f"/v1/loops/deployments/{deployment_id}"))["deployment"]


@pytest.fixture(scope="module")
def trained(api: httpx.Client, tiny_model_dir: Path) -> TrainedRun:
    session_id = new_session(api)
    run = create_run(api, session_id)
    trainer = Trainer(run["base_url"], run["id"])
    trainer.op("init_trainer_server", {"lora_rank": 8, "base_model": run["base_model"]})
    return TrainedRun(session_id, run, trainer)


def sample(sampler_url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{sampler_url}/sample", timeout=120.0, headers=headers,
                      json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0.0})


# -- the round trip ------------------------------------------------------------------


def test_run_is_a_dedicated_deployment_and_trains(cp: ControlPlaneProcess, api: httpx.Client,
                                                  trained: TrainedRun) -> None:
    run = trained.run
    assert run["deployment_id"] and run["base_url"].startswith("http://127.0.0.1:")
    # tiny answers as its local directory so clients can load the tokenizer offline.
    assert Path(run["base_model"]).is_absolute()
    assert (Path(run["base_model"]) / "tokenizer_config.json").exists()
    assert run["status"] == "RUNNING" and run["session_id"] == trained.session_id
    status = deployment(api, run["deployment_id"])
    assert status["status"]["name"] == "RUNNING" and status["kind"] == "trainer"
    assert [h["name"] for h in status["status_history"]] == ["DEPLOYING", "RUNNING"]
    health = httpx.get(f"{run['base_url']}/health", params={"base_model": run["base_model"]},
                       headers={"X-Run-Id": run["id"]}, timeout=30)
    assert health.status_code == 200
    assert ok(api.get(f"/v1/loops/runs/{run['id']}"))["run"]["id"] == run["id"]

    losses = train_steps(trained.trainer, 3)
    assert len(losses) == 3
    published = trained.trainer.op("save_weights_for_sampler",
                                   {"name": "pub-1", "bump_version": True})
    trained.version = int(published["version"])
    assert trained.version >= 1
    assert (cp.home / "logs" / f"trainer-{run['deployment_id']}.log").exists()


def test_paired_sampler_serves_published_version(cp: ControlPlaneProcess, api: httpx.Client,
                                                 trained: TrainedRun) -> None:
    run = trained.run
    body = {"session_id": trained.session_id, "run_id": run["id"]}
    sampler = ok(api.post("/v1/loops/samplers", json=body))["sampler"]
    assert sampler["model_id"] and sampler["deployment_id"] and sampler["base_url"]
    assert sampler["run_id"] == run["id"]
    again = ok(api.post("/v1/loops/samplers", json=body))["sampler"]
    assert again["id"] == sampler["id"] and again["base_url"] == sampler["base_url"]
    assert ok(api.get(f"/v1/models/{sampler['model_id']}/deployments/"
                      f"{sampler['deployment_id']}")) == {"status": "ACTIVE", "reason": None}
    assert paired_sampler_url(cp.home, run["id"]) == sampler["base_url"]

    # Published before the sampler existed: it picks the version up on first sight.
    first = sample(sampler["base_url"], {"X-Run-Id": run["id"],
                                         "X-Min-Policy-Version": str(trained.version)})
    assert first.status_code == 200, first.text
    assert first.headers["x-trainers-policy-version"] == str(trained.version)
    # A publish now goes through the trainer's notify to the registered sampler.
    train_steps(trained.trainer, 1)
    published = trained.trainer.op("save_weights_for_sampler",
                                   {"name": "pub-2", "bump_version": True})
    trained.version = int(published["version"])
    second = sample(sampler["base_url"], {"X-Run-Id": run["id"],
                                          "X-Min-Policy-Version": str(trained.version)})
    assert second.status_code == 200, second.text
    assert second.headers["x-trainers-policy-version"] == str(trained.version)
    # The trainer deployment presents its paired sampler.
    assert deployment(api, run["deployment_id"])["sampler"]["id"] == sampler["deployment_id"]


def test_save_list_download_and_resume(cp: ControlPlaneProcess, api: httpx.Client,
                                       trained: TrainedRun, tmp_path: Path) -> None:
    run = trained.run
    saved = trained.trainer.op("save_state", {"name": "state-1"})
    path = saved["path"].rstrip("/")
    assert path == f"bt://loops:{run['id']}/weights/state-1"
    listed = ok(api.get("/v1/loops/checkpoints", params={"run_id": run["id"]}))["checkpoints"]
    by_name = {(c["checkpoint_id"], c["target"]): c for c in listed}
    assert {("state-1", "trainer"), ("pub-1", "sampler"), ("pub-2", "sampler")} <= set(by_name)
    state = by_name[("state-1", "trainer")]
    assert state["lora_adapter_config"]["r"] == 8 and state["checkpoint_type"] == "training"
    assert state["size_bytes"] > 0 and state["base_model"]
    resolved = ok(api.get("/v1/loops/checkpoints", params={"checkpoint_path": path}))
    assert [c["id"] for c in resolved["checkpoints"]] == [state["id"]]

    # Download through the signed URLs (no headers) and compare with the files on disk.
    folder = checkpoint_dir(cp.home, run["id"], "weights", "state-1")
    files = ok(api.get(f"/v1/loops/checkpoints/{state['id']}/files",
                       params={"page_size": 1000, "page_token": 0}))
    assert files["next_page_token"] is None and files["total_count"] == len(
        files["presigned_urls"]) >= 2
    names = {entry["relative_file_name"] for entry in files["presigned_urls"]}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    for entry in files["presigned_urls"]:
        data = httpx.get(entry["url"], timeout=60).content
        assert data == (folder / entry["relative_file_name"]).read_bytes()
    valid = api.post("/v1/loops/checkpoints/validate",
                     json={"checkpoint_path": f"bt://loops:{run['id']}/sampler_weights/pub-2",
                           "run_id": run["id"]})
    assert valid.status_code == 200

    # Resume as a new run from the saved state: the same forward loss.
    expected = forward_loss(trained.trainer)
    resumed = create_run(api, trained.session_id, base_model=state["base_model"],
                         lora_rank=state["lora_adapter_config"]["r"], path=path)
    # No reuse asked: placed on the run's trainer process all the same (same base model,
    # under the runs-per-trainer cap), with its own adapter slot.
    assert resumed["deployment_id"] == run["deployment_id"] and resumed["reused"] is True
    trainer = Trainer(resumed["base_url"], resumed["id"])
    trainer.op("init_trainer_server", {"lora_rank": 8, "base_model": resumed["base_model"]})
    loaded = trainer.op("load_state_with_optimizer", {"path": path})
    assert loaded["step"] == 4
    assert forward_loss(trainer) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    # The resumed run is not needed by later tests: it stops, the shared trainer stays.
    ok(api.post(f"/v1/loops/deployments/{resumed['deployment_id']}/deactivate",
                params={"run_id": resumed["id"]}))
    assert ok(api.get(f"/v1/loops/runs/{resumed['id']}"))["run"]["status"] == "STOPPED"
    assert deployment(api, resumed["deployment_id"])["status"]["name"] == "RUNNING"


def test_runs_alias_embeds_paired_sampler_and_reuses(api: httpx.Client,
                                                     trained: TrainedRun) -> None:
    body = {"session_id": trained.session_id, "base_model": "tiny", "lora_rank": 4,
            "reuse_from_run_id": trained.run["id"]}
    run = ok(api.post("/v1/loops/runs", json=body))["run"]
    assert run["deployment_id"] == trained.run["deployment_id"] and run["reused"] is True
    sampler = run["sampler"]
    assert sampler is not None and sampler["run_id"] == run["id"]
    # One paired sampler process per trainer deployment: same deployment, own record.
    first = ok(api.post("/v1/loops/samplers", json={"session_id": trained.session_id,
                                                    "run_id": trained.run["id"]}))["sampler"]
    assert sampler["deployment_id"] == first["deployment_id"] and sampler["id"] != first["id"]
    # The team-scoped create route the SDK uses when a team is named.
    team_id = ok(api.get("/v1/teams"))["teams"][0]["id"]
    scoped = ok(api.post(f"/v1/teams/{team_id}/loops/trainers", json={
        **body, "reuse_from_run_id": run["id"]}))["run"]
    assert scoped["deployment_id"] == trained.run["deployment_id"]


def test_standalone_sampler_from_checkpoint(api: httpx.Client, trained: TrainedRun) -> None:
    path = f"bt://loops:{trained.run['id']}/sampler_weights/pub-2"
    sampler = ok(api.post("/v1/loops/samplers", json={
        "session_id": trained.session_id, "availability_model": "dedicated",
        "model_path": path}))["sampler"]
    assert sampler["model_id"] and sampler["run_id"] is None
    assert sampler["deployment_id"] != trained.run["deployment_id"]
    status = ok(api.get(f"/v1/models/{sampler['model_id']}/deployments/"
                        f"{sampler['deployment_id']}"))
    assert status["status"] == "ACTIVE"
    response = sample(sampler["base_url"], {"X-Checkpoint-Path": path})
    assert response.status_code == 200, response.text
    # Another session reusing this one gets the same sampler process for the same model.
    other_session = new_session(api)
    reused = ok(api.post("/v1/loops/samplers", json={
        "session_id": other_session, "base_model": "tiny",
        "reuse_from_session_id": trained.session_id}))["sampler"]
    assert reused["deployment_id"] == sampler["deployment_id"] and reused["id"] != sampler["id"]
    ok(api.post(f"/v1/loops/deployments/{sampler['deployment_id']}/deactivate"))
    assert ok(api.get(f"/v1/models/{sampler['model_id']}/deployments/"
                      f"{sampler['deployment_id']}"))["status"] == "INACTIVE"


# -- reuse, crashes, restarts --------------------------------------------------------------


def test_reuse_then_kill_recovers(cp: ControlPlaneProcess, api: httpx.Client,
                                  trained: TrainedRun) -> None:
    original = deployment(api, trained.run["deployment_id"])
    pid = original["pid"]
    second_session = new_session(api)
    started = time.monotonic()
    reused = create_run(api, second_session, reuse_from_session_id=trained.session_id)
    assert time.monotonic() - started < 10
    assert reused["deployment_id"] == trained.run["deployment_id"] and reused["reused"] is True
    assert deployment(api, reused["deployment_id"])["pid"] == pid  # same process: no new load
    log = cp.home / "logs" / f"trainer-{reused['deployment_id']}.log"
    assert log.read_text().count("LOOPS_SERVER_URL=") == 1

    # Kill the trainer: FAILED within 10 s, with a reason; its runs report it.
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def failed_event() -> dict[str, Any] | None:
        history = deployment(api, trained.run["deployment_id"])["status_history"]
        return next((h for h in history if h["name"] == "FAILED"), None)

    event = wait_for(failed_event, 10.0, message="FAILED status")
    assert time.monotonic() - killed_at < 10
    assert "SIGKILL" in event["reason"] and str(pid) in event["reason"]
    run_state = ok(api.get(f"/v1/loops/runs/{trained.run['id']}"))["run"]
    assert run_state["status"] == "FAILED" and "SIGKILL" in run_state["reason"]

    # The same reuse call succeeds on a fresh process (the crashed one restarted once).
    again = create_run(api, second_session, reuse_from_session_id=trained.session_id)
    current = deployment(api, again["deployment_id"])
    assert current["status"]["name"] == "RUNNING" and current["pid"] != pid
    assert httpx.get(f"{again['base_url']}/health", params={"base_model": again["base_model"]},
                     timeout=30).status_code == 200

    # Kill it again: no second restart, so reuse now provisions a new deployment; the
    # dead one's port answers 503 instead of refusing connections (no hour of retries).
    os.kill(current["pid"], signal.SIGKILL)
    wait_for(lambda: "not restarting" in (deployment(api, current["id"])["status"]["reason"]
                                          or ""), 10.0, message="final failure")
    # Two such calls at once (sweep jobs starting together) share one new trainer.
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: create_run(api, second_session,
                                                  reuse_from_session_id=trained.session_id),
                             range(2)))
    assert both[0]["deployment_id"] == both[1]["deployment_id"] != current["id"]
    assert sorted(run["reused"] for run in both) == [False, True]
    gone = httpx.post(f"{current['base_url']}/forward", json={}, timeout=10)
    assert gone.status_code == 503 and "failed" in gone.json()["detail"]


def test_failed_deploy_reports_log_lines(api: httpx.Client, trained: TrainedRun) -> None:
    response = api.post("/v1/loops/trainers", json={
        "session_id": trained.session_id, "base_model": "loops-test/no-such-model",
        "lora_rank": 8})
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["details"]["reason"] == "DEPLOYMENT_FAILED"
    assert "Last log lines" in body["detail"]
    failed = [run for run in ok(api.get("/v1/loops/runs"))["runs"]
              if run["base_model"] == "loops-test/no-such-model"]
    assert len(failed) == 1 and failed[0]["status"] == "FAILED"


def test_control_plane_stop_and_restart(cp: ControlPlaneProcess, api: httpx.Client,
                                        trained: TrainedRun) -> None:
    """Runs last: stopping the control plane stops its children; a restart keeps state."""
    deployments = ok(api.get("/v1/loops/deployments"))["deployments"]
    live_pids = [d["pid"] for d in deployments if d["status"]["name"] in {"RUNNING", "ACTIVE"}]
    assert live_pids
    runs_before = {run["id"] for run in ok(api.get("/v1/loops/runs"))["runs"]}
    checkpoints_before = {c["id"] for c in ok(api.get(
        "/v1/loops/checkpoints", params={"run_id": trained.run["id"]}))["checkpoints"]}
    cp.stop()
    for pid in live_pids:
        assert not pid_alive(pid), f"child {pid} outlived the control plane"
    assert child_server_pids(cp.home) == []
    restarted = start_control_plane(cp.home, api_key=API_KEY)
    try:
        with restarted.client() as client:
            assert ok(client.get(f"/v1/loops/sessions/{trained.session_id}"))
            assert {run["id"] for run in ok(client.get("/v1/loops/runs"))["runs"]} == runs_before
            listed = ok(client.get("/v1/loops/checkpoints",
                                   params={"run_id": trained.run["id"]}))["checkpoints"]
            assert {c["id"] for c in listed} == checkpoints_before
            states = {d["status"]["name"] for d in ok(client.get("/v1/loops/deployments"))[
                "deployments"]}
            assert states <= {"STOPPED", "FAILED"}
            stopped = deployment(client, trained.run["deployment_id"])
            assert stopped["status"]["name"] in {"STOPPED", "FAILED"}
            assert parse_bt_path(listed[0]["path"]).run_id == trained.run["id"]
    finally:
        restarted.stop()


def test_idle_servers_stop(tmp_path_factory: pytest.TempPathFactory,
                           tiny_model_dir: Path) -> None:
    with (tiny_control_plane(tmp_path_factory, tiny_model_dir, "cp_idle_home",
                             extra=["--idle-timeout", "3"]) as cp,
          cp.client() as client):
        session_id = new_session(client)
        run = ok(client.post("/v1/loops/runs", json={
            "session_id": session_id, "base_model": "tiny", "lora_rank": 8}))["run"]
        sampler = run["sampler"]
        assert sampler is not None
        pid = deployment(client, run["deployment_id"])["pid"]
        sampler_pid = deployment(client, sampler["deployment_id"])["pid"]
        # Heartbeats (the SDK's GET /health every 60 s, here faster) keep the trainer
        # alive, and with it its paired sampler, which sees no request meanwhile.
        until = time.monotonic() + 7
        while time.monotonic() < until:
            assert httpx.get(f"{run['base_url']}/health", timeout=10).status_code == 200
            time.sleep(0.5)
        assert deployment(client, run["deployment_id"])["status"]["name"] == "RUNNING"
        assert deployment(client, sampler["deployment_id"])["status"]["name"] == "ACTIVE"
        for deployment_id in (run["deployment_id"], sampler["deployment_id"]):
            stopped = wait_for(
                lambda deployment_id=deployment_id: (
                    d := deployment(client, deployment_id))["status"]["name"] == "STOPPED"
                and d, 15.0, message="idle stop")
            assert "idle" in stopped["status"]["reason"]
        wait_for(lambda: not pid_alive(pid) and not pid_alive(sampler_pid), 10.0,
                 message="children exit")
        assert ok(client.get(f"/v1/loops/runs/{run['id']}"))["run"]["status"] == "STOPPED"
        assert ok(client.get(f"/v1/models/{sampler['model_id']}/deployments/"
                             f"{sampler['deployment_id']}"))["status"] == "INACTIVE"
        gone = httpx.get(f"{run['base_url']}/health", timeout=10)
        assert gone.status_code == 503 and "idle" in gone.json()["detail"]
        gone = httpx.post(f"{sampler['base_url']}/sample", json={"prompt": [1]}, timeout=10)
        assert gone.status_code == 400
        assert gone.json()["error"]["type"] == "BadRequestError"


def test_deploy_timeout_fails_with_reason(tmp_path_factory: pytest.TempPathFactory,
                                          tiny_model_dir: Path) -> None:
    """A server that is not healthy within the deploy timeout is stopped and FAILED."""
    with (tiny_control_plane(tmp_path_factory, tiny_model_dir, "cp_timeout_home",
                             env={"LOOPS_CP_DEPLOY_TIMEOUT": "1"}) as cp,
          cp.client() as client):
        session_id = new_session(client)
        response = client.post("/v1/loops/trainers", json={
            "session_id": session_id, "base_model": "tiny", "lora_rank": 8})
        assert response.status_code == 503, response.text
        assert "did not become healthy within 1s" in response.json()["detail"]
        [failed] = ok(client.get("/v1/loops/deployments"))["deployments"]
        assert failed["status"]["name"] == "FAILED" and failed["pid"] is None
        [run] = ok(client.get("/v1/loops/runs"))["runs"]
        assert run["status"] == "FAILED"
        assert child_server_pids(cp.home) == []
