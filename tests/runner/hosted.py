"""Our control plane as a stand-in for Baseten's: a key on every route, its own data home.

The runner reaches it the way it reaches Baseten (``backend=baseten``, the key
in ``$BASETEN_API_KEY``, ``backend.base_url`` pointing at it); tests read its
state back through the same routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loops_runner.servers.control_plane.auth import API_KEY_ENV
from loops_runner.servers.launch import ServerProcess, spawn_server

API_KEY = "stand-in-key"


@dataclass
class StandIn:
    url: str
    home: Path
    process: ServerProcess

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {API_KEY}"}

    def get(self, path: str, **params: str) -> dict:
        response = httpx.get(f"{self.url}{path}", headers=self.headers, params=params,
                             timeout=30.0)
        assert response.status_code == 200, response.text
        return response.json()

    def run(self, run_id: str) -> dict:
        return self.get(f"/v1/loops/runs/{run_id}")["run"]

    def deployment(self, deployment_id: str) -> dict:
        return self.get(f"/v1/loops/deployments/{deployment_id}")["deployment"]

    def session_runs(self, session_id: str) -> list[dict]:
        return self.get("/v1/loops/runs", session_id=session_id)["runs"]

    def env(self) -> dict[str, str]:
        """What a user sets for backend=baseten (the stand-in's URL goes in the config)."""
        return {"BASETEN_API_KEY": API_KEY}


@contextmanager
def stand_in_control_plane(home: Path) -> Iterator[StandIn]:
    """A control plane on 127.0.0.1 with an API key; its servers stop with it."""
    from loops_runner.models import tiny

    tiny.prepare(home)
    process = spawn_server(["control-plane", "--port", "0", "--home", str(home)],
                           home / "logs" / "stand-in.log", env={API_KEY_ENV: API_KEY})
    stand_in = StandIn(process.url, home, process)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{process.url}/health", headers=stand_in.headers,
                             timeout=5.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the stand-in control plane did not start"
            time.sleep(0.2)
        yield stand_in
    finally:
        process.stop(timeout=30.0)
