"""Helpers for the control-plane tests: a control plane in a subprocess, checkpoint folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from loops_runner.servers.control_plane.auth import API_KEY_ENV
from loops_runner.servers.launch import ServerProcess, spawn_server, tail
from loops_runner.storage import atomic, layout, manifests
from loops_runner.wire.paths import CheckpointKind


@dataclass
class ControlPlaneProcess:
    server: ServerProcess
    home: Path
    api_key: str | None
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.pid

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def log(self) -> str:
        return tail(self.server.log_path, 60)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, as a user's Ctrl-C or a service manager would."""
        if self.server.alive():
            self.server.process.send_signal(signal.SIGTERM)
            self.server.process.wait(timeout)


def start_control_plane(home: Path, *, api_key: str | None = None,
                        extra: list[str] | None = None,
                        env: dict[str, str] | None = None) -> ControlPlaneProcess:
    args = ["control-plane", "--home", str(home), "--port", "0", *(extra or [])]
    if api_key:
        # The key goes in the environment, never on the command line (ps shows that).
        env = {**(env or {}), API_KEY_ENV: api_key}
    server = spawn_server(args, home / "logs" / "control-plane-test.log", env=env,
                          start_timeout=60)
    return ControlPlaneProcess(server, home, api_key, args)


def copy_tiny(source: Path, home: Path) -> None:
    """Give a fresh data home the already built tiny model (building it takes ~8 s)."""
    target = home / "models" / source.name
    if not target.exists():
        shutil.copytree(source, target)


@contextmanager
def tiny_control_plane(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
                       home_name: str, **options: Any) -> Iterator[ControlPlaneProcess]:
    """A control plane on a fresh data home that has the tiny model, stopped on exit.

    ``options`` go to :func:`start_control_plane` (api_key, extra, env).
    """
    home = tmp_path_factory.mktemp(home_name)
    copy_tiny(tiny_model_dir, home)
    process = start_control_plane(home, **options)
    try:
        yield process
    finally:
        process.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout}s")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def write_checkpoint(home: Path, run_id: str, kind: CheckpointKind, name: str, *,
                     base_model: str, rank: int = 8, files: dict[str, bytes] | None = None,
                     ttl_seconds: int | None = None, step: int = 3) -> Path:
    """A checkpoint folder as the trainer writes it (files + checkpoint.json, atomically)."""
    files = files or {"adapter_config.json": json.dumps({"r": rank}).encode(),
                      "adapter_model.safetensors": os.urandom(2048)}
    created = datetime.now(UTC)
    final = layout.checkpoint_dir(home, run_id, kind, name)
    with atomic.atomic_directory(final) as staging:
        for relative, data in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        manifest = {
            "id": manifests.checkpoint_api_id(run_id, kind, name), "run_id": run_id,
            "checkpoint_id": name, "kind": kind, "target": manifests.TARGET_BY_KIND[kind],
            "checkpoint_type": "training" if kind == "weights" else "sampler",
            "base_model": base_model, "lora_rank": rank, "lora_alpha": 2.0 * rank,
            "step": step, "created_at": created.isoformat().replace("+00:00", "Z"),
            "ttl_seconds": ttl_seconds,
            "expires_at": ((created + timedelta(seconds=ttl_seconds)).isoformat()
                           .replace("+00:00", "Z") if ttl_seconds else None),
            "size_bytes": sum(len(data) for data in files.values()),
            "files": {relative: hashlib.sha256(data).hexdigest()
                      for relative, data in files.items()},
        }
        (staging / manifests.MANIFEST_FILE).write_text(json.dumps(manifest))
    return final


def child_server_pids(home: Path) -> list[int]:
    """Pids of live trainer/sampler servers started for ``home`` (from /proc)."""
    return server_pids(home, ("trainer", "sampler"))


def server_pids(home: Path, kinds: tuple[str, ...]) -> list[int]:
    """Pids of live ``loops-runner serve <kind>`` processes for ``home`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if ("loops_runner.cli" in words and str(home) in words
                and any(kind in words for kind in kinds) and pid_alive(int(entry.name))):
            found.append(int(entry.name))
    return found
