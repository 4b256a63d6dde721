"""Start a server in a child process and wait for the URL it announces.

Used by the control plane's supervisor and by the tests, so both start
servers the same way a user does (``loops-runner serve ...``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# A server prints this line (and flushes) once it accepts connections; launchers
# and tests read the URL from it, which is how ``--port 0`` reports its port.
# Defined here, not with the servers' shared pieces: the runner's CLI imports
# this module to start its daemon, and must not pay for importing fastapi.
URL_LINE_PREFIX = "LOOPS_SERVER_URL="


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# Servers inherit these unless the caller's environment sets them. libgomp's
# default lets idle OpenMP threads spin between parallel regions, taking the
# CPU from everything else on the machine (the other local servers, the
# runner, other jobs); where cores are shared that made a LoRA step 3-6x
# slower (docs/performance.md). Passive waiting costs a futex wake-up per
# parallel region, nothing next to the matmuls.
CHILD_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


class ServerStartError(RuntimeError):
    pass


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_healthy(self, path: str = "/health", timeout: float = 180.0) -> None:
        """Poll ``path`` until it answers 200; fail early, with the log, if the server dies.

        The URL line means the socket listens; a server may still be loading its
        model behind it, which its health route reports.
        """
        import httpx

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerStartError(f"server died:\n{tail(self.log_path)}")
            try:
                response = httpx.get(self.url + path, timeout=5.0)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise ServerStartError(f"{self.url}{path} not healthy after {timeout:.0f}s ({last}):\n"
                               f"{tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def spawn_server(
    args: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    start_timeout: float = 180.0,
    on_spawn: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> ServerProcess:
    """Run ``loops-runner serve <args>`` with output to ``log_path``; wait for its URL.

    ``on_spawn`` gets the process as soon as it exists, so a supervisor can
    watch or stop it while this call still waits for the URL.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "loops_runner.cli", "serve", *args]
    child_env = {**CHILD_ENV_DEFAULTS, **os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        offset = log.tell()
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_env,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    if on_spawn is not None:
        on_spawn(process)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        with open(log_path, "rb") as log:
            log.seek(offset)
            for line in log.read().decode(errors="replace").splitlines():
                if line.startswith(URL_LINE_PREFIX):
                    return ServerProcess(process, line[len(URL_LINE_PREFIX):].strip(), log_path)
        if process.poll() is not None:
            raise ServerStartError(
                f"server exited with code {process.returncode} before listening; "
                f"last log lines:\n{tail(log_path)}"
            )
        time.sleep(0.1)
    process.kill()
    raise ServerStartError(f"server did not announce its URL within {start_timeout:.0f}s:\n"
                           f"{tail(log_path)}")
