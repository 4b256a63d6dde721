"""Server processes of the control plane: starting, adopting and stopping them.

Each deployment is one ``loops-runner serve trainer|sampler`` child on a
loopback port, logging to ``<home>/logs/<kind>-<deployment>.log``. A child the
control plane started is a ``PopenHandle``; a child an earlier, killed control
plane left running is adopted as an ``AdoptedHandle`` (not our child: only
whether its pid still runs). Stopping is SIGTERM, then SIGKILL.

Nothing here knows about deployment statuses; the supervisor decides what a
process's start or end means (``deployment_states``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from loops_runner.servers.control_plane.tables import DeploymentRow
from loops_runner.servers.launch import ServerProcess, pid_running, spawn_server, tail

LOG_TAIL_LINES = 15


class ProcessHandle(Protocol):
    pid: int

    def exit_code(self) -> int | None:
        """None while running; the exit code (negative: signal) once it ended."""

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class PopenHandle:
    """A child this control plane started."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.pid = process.pid

    def exit_code(self) -> int | None:
        return self.process.poll()

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


class AdoptedHandle:
    """A child of an earlier control plane that was killed before it could stop them.

    Not our child, so no exit code: only whether the pid still runs.
    """

    UNKNOWN_EXIT = 255

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def exit_code(self) -> int | None:
        return None if pid_running(self.pid) else self.UNKNOWN_EXIT

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


@dataclass
class Child:
    deployment_id: str
    handle: ProcessHandle
    url: str | None = None  # None while the process has not announced its URL
    stopping: bool = False
    started_at: float = field(default_factory=time.time)


def spawn(row: DeploymentRow, home: Path, port: int, *, start_timeout: float,
          on_spawn: Callable[[subprocess.Popen[bytes]], None]) -> ServerProcess:
    """Start the server of ``row`` (``port`` 0: any free one) and wait for its URL (blocking).

    ``on_spawn`` gets the process as soon as it exists, before it listens.
    """
    args = [row.kind, "--base-model", row.launch_model, "--home", str(home),
            "--host", "127.0.0.1", "--port", str(port)]
    return spawn_server(args, Path(row.log_path), start_timeout=start_timeout,
                        on_spawn=on_spawn)


def stop_process(handle: ProcessHandle, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` (blocking: run it in a thread)."""
    handle.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.exit_code() is not None:
            return
        time.sleep(0.05)
    handle.kill()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and handle.exit_code() is None:
        time.sleep(0.05)


def runs_our_server(pid: int, kind: str, home: Path) -> bool:
    """Whether ``pid`` still runs a ``kind`` server of this data home (not a reused pid)."""
    if not pid_running(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [part.decode(errors="replace") for part in command]
    return "loops_runner.cli" in words and kind in words and str(home) in words


def describe_exit(kind: str, pid: int, code: int | None) -> str:
    if code is None:
        return f"{kind} process {pid} is gone"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{kind} process {pid} was killed by {name}"
    if code == AdoptedHandle.UNKNOWN_EXIT:
        return f"{kind} process {pid} exited"
    return f"{kind} process {pid} exited with code {code}"


def with_log_tail(message: str, log_path: str) -> str:
    lines = tail(Path(log_path), LOG_TAIL_LINES).strip()
    return f"{message}. Last log lines ({log_path}):\n{lines}" if lines else message
