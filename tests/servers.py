"""Test helpers to start real servers on 127.0.0.1 and wait until they are ready."""

from __future__ import annotations

from pathlib import Path

from loops_runner.servers.launch import ServerProcess, spawn_server


def start_server(args: list[str], home: Path, log_name: str, health_path: str = "/health",
                 env: dict[str, str] | None = None) -> ServerProcess:
    server = spawn_server([*args, "--home", str(home)], home / "logs" / log_name, env=env)
    server.wait_healthy(health_path)
    return server
