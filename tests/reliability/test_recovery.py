"""Automatic recovery: a killed trainer costs a retry, a killed control plane costs nothing.

The real CLI runs the sft recipe on the local stack. Once a checkpoint exists,
the trainer process is killed with SIGKILL: its runs' state is gone, so the
runner retries on its own (``resume.auto_retries``) with a fresh run restored
from the last checkpoint (optimizer, data cursor, RNG). In that second attempt
the control-plane daemon is killed with SIGKILL: the trainer still holds the
run, so the client starts the daemon again at its next control-plane call
(the reconnect hook of the local backend), the new daemon adopts the running
trainer and sampler from its SQLite state, and the same run finishes on the
same trainer process. Both end with the final metrics of an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from loops_runner.runner.local_daemon import find_control_plane
from loops_runner.servers.launch import pid_running
from tests.runner.conftest import run_runner, runner_command, runner_env

STEPS = 6
ARGS = ["+recipe=sft", f"recipe.max_steps={STEPS}", "recipe.save_every=2", "seed=11",
        "recipe.dataset.num_examples=400", "recipe.batch_size=16", "recipe.eval_every=3",
        "recipe.dataset.eval_examples=32", "recipe.num_final_samples=1",
        "recipe.evaluators.0.num_prompts=14", "report=false"]


def _final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())["final_metrics"]


def _wait_for_checkpoint(work: Path, process: subprocess.Popen, min_step: int) -> Path:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        for run_json in (work / "outputs" / "sft").glob("*/run.json"):
            record = json.loads(run_json.read_text())
            if any(c["step"] >= min_step for c in record.get("checkpoints", [])):
                return run_json
        time.sleep(0.05)
    raise AssertionError("no checkpoint before the run ended")


def _trainer_pid(home: Path, run_id: str) -> int:
    daemon = find_control_plane(home)
    assert daemon is not None
    headers = {"Authorization": f"Api-Key {daemon.api_key}"}
    run = httpx.get(f"{daemon.url}/v1/loops/runs/{run_id}", headers=headers).json()["run"]
    deployment = httpx.get(f"{daemon.url}/v1/loops/deployments/{run['deployment_id']}",
                           headers=headers).json()["deployment"]
    return int(deployment["pid"])


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory: pytest.TempPathFactory, runner_home: Path) -> dict:
    """The final metrics of the same command, never interrupted."""
    work = tmp_path_factory.mktemp("reference")
    reference = run_runner(*ARGS, cwd=work, home=runner_home)
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    return _final_metrics(next((work / "outputs" / "sft").iterdir()))


def _wait_for_attempt(run_json: Path, process: subprocess.Popen, attempt: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if json.loads(run_json.read_text()).get("attempts", 0) >= attempt:
            return
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt} never started")


def _control_plane_pid(home: Path) -> int:
    daemon = find_control_plane(home)
    assert daemon is not None
    return daemon.pid


def test_killed_trainer_costs_a_retry_and_killed_control_plane_keeps_the_run(
        tmp_path: Path, runner_home: Path, reference_metrics: dict) -> None:
    """kill -9 the trainer after the first checkpoint, then the daemon in the next attempt.

    The trainer's death surfaces at once (its operations are gone) and costs one
    retry with a fresh run. The control plane's surfaces at the next call to it
    (the evaluation's sampler checkpoint check); the client reconnects and that
    attempt carries on: no third attempt, no third run, the same trainer pid.
    """
    log_path = tmp_path / "runner.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(runner_command(*ARGS), cwd=tmp_path,
                                   env=runner_env(runner_home), stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        run_json = _wait_for_checkpoint(tmp_path, process, min_step=2)
        first_run = json.loads(run_json.read_text())["run_id"]
        os.kill(_trainer_pid(runner_home, first_run), signal.SIGKILL)
        _wait_for_attempt(run_json, process, 2)
        second_run = json.loads(run_json.read_text())["run_ids"][-1]
        trainer_pid = _trainer_pid(runner_home, second_run)
        killed_daemon = _control_plane_pid(runner_home)
        os.kill(killed_daemon, signal.SIGKILL)
        code = process.wait(timeout=300)
    output = log_path.read_text()
    assert code == 0, output[-4000:]

    record = json.loads(run_json.read_text())
    assert record["status"] == "completed" and record["attempts"] == 2, output[-4000:]
    assert output.count("Retrying from its last checkpoint") == 1
    assert output.count("Resuming from step") == 1
    # The trainer's death cost one fresh run; the control plane's none.
    assert record["run_ids"] == [first_run, second_run] and first_run != second_run
    assert record["run_id"] == second_run
    assert "stopped answering; reconnected to" in output  # the client did reconnect
    daemon = find_control_plane(runner_home)
    assert daemon is not None and daemon.pid != killed_daemon  # the client started a new one
    # ... which adopted the run's trainer: the same process, still alive, served it to the end.
    assert _trainer_pid(runner_home, second_run) == trainer_pid and pid_running(trainer_pid)
    for key, value in reference_metrics.items():
        assert record["final_metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    steps = [json.loads(line)["step"] for line in (run_json.parent / "metrics.jsonl")
             .read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(1, STEPS + 1))  # one line per step, none lost or doubled


def test_client_reconnects_to_a_restarted_daemon_and_keeps_its_session(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The reconnect hook at the SDK level, on a daemon with no servers (cheap to restart).

    With the hook, a call after a kill -9 starts the daemon again and is answered,
    for the same session; without it, a control-plane call is one attempt (spec
    2.4); a hook that never finds a control plane gives up within its budget.
    """
    from loops_runner.runner.local_daemon import reconnect_control_plane
    from loops_runner.sdk import ServiceClient
    from loops_runner.sdk.control_plane import ControlPlaneClient
    from loops_runner.sdk.errors import ServerUnavailableError
    from tests.runner.conftest import private_home

    with private_home(tmp_path_factory, "reconnect_home") as home:
        reconnect = functools.partial(reconnect_control_plane, home, 600.0)
        url, api_key = reconnect()
        service = ServiceClient(api_key=api_key, base_url=url, reconnect=reconnect)
        first = _control_plane_pid(home)
        os.kill(first, signal.SIGKILL)
        _wait_until_dead(first)

        assert service.list_checkpoints("run-without-checkpoints") == []
        assert service.base_url != url and _control_plane_pid(home) != first
        session = httpx.get(f"{service.base_url}/v1/loops/sessions/{service.session_id}",
                            headers={"Authorization": f"Api-Key {api_key}"}, timeout=30)
        assert session.status_code == 200, session.text  # the session came back from SQLite

        plain = ServiceClient(api_key=api_key, base_url=service.base_url)
        second = _control_plane_pid(home)
        os.kill(second, signal.SIGKILL)
        _wait_until_dead(second)
        # One attempt, and the transport's error: a refused connect, or, when
        # the pooled keep-alive connection to the dead daemon is reused before
        # the kernel's reset has been seen, a reset read.
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            plain.list_checkpoints("run-without-checkpoints")

    dead = service.base_url
    stuck = ControlPlaneClient(dead, api_key, reconnect=lambda: (dead, api_key),
                               reconnect_budget=3.0)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="could not reach the server"):
        stuck.list_checkpoints("run-without-checkpoints")
    assert time.monotonic() - started < 15


class _HangUp(socketserver.BaseRequestHandler):
    """Reads the request and closes the connection unanswered: a control plane that
    died after the request arrived."""

    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        self.request.recv(65536)


def test_a_create_cut_off_mid_answer_is_not_resent_but_a_read_is() -> None:
    """The create may have provisioned something before the answer was lost: resending
    it could make a second trainer, so it fails (the runner's retry takes over)."""
    from loops_runner.sdk.control_plane import ControlPlaneClient
    from loops_runner.sdk.errors import ServerUnavailableError

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _HangUp)
    server.connections = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        reconnects: list[str] = []

        def reconnect() -> tuple[str, str | None]:
            reconnects.append(url)
            return url, "key"

        client = ControlPlaneClient(url, "key", reconnect=reconnect, reconnect_budget=4.0)
        with pytest.raises(httpx.RemoteProtocolError):
            client.create_session(None)
        assert server.connections == 1 and reconnects == []  # type: ignore[attr-defined]
        with pytest.raises(ServerUnavailableError):
            client.list_checkpoints("run-x")
        assert server.connections >= 3 and reconnects  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def _wait_until_dead(pid: int) -> None:
    deadline = time.monotonic() + 30
    while pid_running(pid):
        assert time.monotonic() < deadline, f"process {pid} outlived SIGKILL"
        time.sleep(0.05)


def test_only_service_failures_are_retried() -> None:
    from loops_runner.runner.config import ConfigError
    from loops_runner.runner.recovery import is_recoverable
    from loops_runner.sdk.errors import ServerUnavailableError, UnknownRequestError

    assert is_recoverable(UnknownRequestError("the trainer restarted"))
    assert is_recoverable(ServerUnavailableError("no answer"))
    assert is_recoverable(httpx.ConnectError("refused"))
    try:  # a recipe that wraps the service failure in its own error
        try:
            raise httpx.ReadError("connection reset")
        except httpx.ReadError as inner:
            raise RuntimeError("eval failed") from inner
    except RuntimeError as wrapped:
        assert is_recoverable(wrapped)
    assert not is_recoverable(ConfigError("recipe.learning_rate: must be > 0"))
    assert not is_recoverable(ValueError("a bug in the recipe"))
    assert not is_recoverable(KeyboardInterrupt())


def test_killed_sampler_is_restarted_and_serves_the_published_weights(
        keyed_control_plane) -> None:
    """kill -9 the paired sampler: the control plane restarts it on its port, it reads the
    live pointer again, and the same client's next sample is the same greedy answer."""
    from loops_runner.models import tiny
    from loops_runner.sdk import AdamParams, ModelInput, SamplingParams, ServiceClient
    from tests.reliability.conftest import API_KEY
    from tests.reliability.load import datum

    tiny.prepare(keyed_control_plane.home)
    service = ServiceClient(api_key=API_KEY, base_url=keyed_control_plane.url)
    training = service.create_lora_training_client(base_model="tiny", rank=4, seed=3,
                                                   ready_timeout=240)
    training.forward_backward([datum(1, 1)], loss_fn="cross_entropy").result()
    training.optim_step(AdamParams(learning_rate=5e-2)).result()
    sampling = training.save_weights_and_get_sampling_client(name="before-kill")
    params = SamplingParams(max_tokens=6, temperature=0.0)
    prompt = ModelInput.from_ints([5, 9, 13, 17])
    before = sampling.sample(prompt=prompt, num_samples=1, sampling_params=params)

    headers = keyed_control_plane.headers()
    deployments = httpx.get(f"{keyed_control_plane.url}/v1/loops/deployments", headers=headers,
                            timeout=30).json()["deployments"]
    (sampler,) = [d for d in deployments if d["kind"] == "sampler" and d["pid"]]
    os.kill(sampler["pid"], signal.SIGKILL)

    after = sampling.sample(prompt=prompt, num_samples=1, sampling_params=params)
    assert after.sequences[0].tokens == before.sequences[0].tokens
    assert after.policy_version == before.policy_version
    restarted = httpx.get(f"{keyed_control_plane.url}/v1/loops/deployments/{sampler['id']}",
                          headers=headers, timeout=30).json()["deployment"]
    assert restarted["restarts"] == 1 and restarted["pid"] != sampler["pid"]
