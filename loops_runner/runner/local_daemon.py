"""The local backend's control plane, kept running as a per-user background daemon.

The first run starts it (``loops-runner serve control-plane``) in its own
process session with a per-user API key; later runs and sweep jobs find it
through ``<home>/runner/control_plane.json`` and reuse it and its warm
trainers. A lock makes concurrent runs agree on one daemon.
"""

from __future__ import annotations

import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
from filelock import FileLock

from loops_runner.sdk.http import tls_context
from loops_runner.servers.launch import pid_running, spawn_server
from loops_runner.storage.atomic import atomic_write_json, read_json
from loops_runner.wire.placement import DEFAULT_RUNS_PER_TRAINER

STATE_FILE = "control_plane.json"
KEY_FILE = "api_key"


@dataclass(frozen=True)
class DaemonControlPlane:
    """The runner's background control plane process: where it listens and its pid."""

    url: str
    api_key: str
    pid: int
    started_now: bool


def runner_dir(home: Path) -> Path:
    directory = home / "runner"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def user_api_key(home: Path) -> str:
    """The per-user key the daemon requires; created once, readable by the user only."""
    path = runner_dir(home) / KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def _answers(url: str, api_key: str) -> bool:
    try:
        response = httpx.get(f"{url}/v1/loops/capabilities", timeout=5.0,
                             headers={"Authorization": f"Api-Key {api_key}"},
                             verify=tls_context())
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def find_control_plane(home: Path) -> DaemonControlPlane | None:
    state = read_json(runner_dir(home) / STATE_FILE)
    if not isinstance(state, dict):
        return None
    api_key = user_api_key(home)
    pid, url = int(state.get("pid", 0)), str(state.get("url", ""))
    if pid and pid_running(pid) and url and _answers(url, api_key):
        return DaemonControlPlane(url, api_key, pid, started_now=False)
    return None


def ensure_control_plane(home: Path, idle_timeout_s: float,
                         runs_per_trainer: int = DEFAULT_RUNS_PER_TRAINER
                         ) -> DaemonControlPlane:
    """Find the running daemon for ``home`` or start one.

    A daemon already running keeps the settings it was started with.
    """
    with FileLock(str(runner_dir(home) / "control_plane.lock")):
        found = find_control_plane(home)
        if found is not None:
            return found
        api_key = user_api_key(home)
        # The daemon reads the key from its 0600 file: on the command line any
        # local user would see it (ps), and the launch log would record it.
        server = spawn_server(
            ["control-plane", "--home", str(home),
             "--api-key-file", str(runner_dir(home) / KEY_FILE),
             "--idle-timeout", str(idle_timeout_s),
             "--runs-per-trainer", str(runs_per_trainer)],
            home / "logs" / "control-plane.log",
        )
        atomic_write_json(runner_dir(home) / STATE_FILE, {"url": server.url, "pid": server.pid})
        return DaemonControlPlane(server.url, api_key, server.pid, started_now=True)


def reconnect_control_plane(home: Path, idle_timeout_s: float,
                            runs_per_trainer: int = DEFAULT_RUNS_PER_TRAINER
                            ) -> tuple[str, str | None]:
    """The client's reconnect hook: where the daemon of ``home`` listens now.

    A daemon that died is started again here; it finds the sessions and runs
    in its SQLite file and adopts the trainers and samplers still running, so
    the run in progress keeps its trainer and state. (A module function, not a
    closure: a sampling client that holds it must stay picklable.)
    """
    daemon = ensure_control_plane(home, idle_timeout_s, runs_per_trainer)
    return daemon.url, daemon.api_key


def stop_control_plane(home: Path) -> bool:
    """Stop the daemon of ``home`` (it stops its trainers and samplers)."""
    state = read_json(runner_dir(home) / STATE_FILE)
    if not isinstance(state, dict) or not state.get("pid"):
        return False
    pid = int(state["pid"])
    if not pid_running(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    return True
