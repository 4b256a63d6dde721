"""Test helpers to start real servers on 127.0.0.1 and wait until they are ready."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from loops_runner.servers.launch import ServerProcess, spawn_server, tail


def wait_healthy(server: ServerProcess, path: str = "/health", timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"server died:\n{tail(server.log_path)}")
        try:
            response = httpx.get(server.url + path, timeout=5.0)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout}s ({last}):\n{tail(server.log_path)}")


def start_server(args: list[str], home: Path, log_name: str, health_path: str = "/health",
                 env: dict[str, str] | None = None) -> ServerProcess:
    server = spawn_server([*args, "--home", str(home)], home / "logs" / log_name, env=env)
    wait_healthy(server, health_path)
    return server
