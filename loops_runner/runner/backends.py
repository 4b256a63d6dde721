"""Building the ServiceClient for the configured backend: local, baseten or external."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from loops_runner.home import loops_home
from loops_runner.runner.config import (
    BasetenBackend,
    ConfigError,
    ExternalBackend,
    LocalBackend,
    RunnerConfig,
)
from loops_runner.storage.atomic import atomic_write_json, read_json

SESSIONS_FILE = "sessions.json"


def _remembered_session(home: Path, base_model: str) -> str | None:
    from loops_runner.runner.local_daemon import runner_dir

    sessions = read_json(runner_dir(home) / SESSIONS_FILE)
    return sessions.get(base_model) if isinstance(sessions, dict) else None


def remember_session(config: RunnerConfig, session_id: str) -> None:
    """Note the session so the next local run of this base model reuses its warm trainer."""
    if not isinstance(config.backend, LocalBackend):
        return
    from loops_runner.runner.local_daemon import runner_dir

    path = runner_dir(loops_home(config.backend.home)) / SESSIONS_FILE
    # Parallel jobs of different base models must not drop each other's entry.
    with FileLock(str(path) + ".lock"):
        sessions = read_json(path)
        sessions = sessions if isinstance(sessions, dict) else {}
        sessions[config.model.base_model] = session_id
        atomic_write_json(path, sessions)


@contextmanager
def provisioning_turn(config: RunnerConfig) -> Iterator[None]:
    """Jobs take turns from picking a session to reuse until they remembered theirs.

    Only where sessions are remembered (local backend, reuse "auto"): without
    turns, every job of a parallel sweep on a fresh data home would find no
    session to reuse and provision a trainer of its own. The first job
    provisions and remembers; the others then reuse its warm trainer.
    """
    backend = config.backend
    if not isinstance(backend, LocalBackend) or config.session.reuse_from_session_id != "auto":
        yield
        return
    from loops_runner.runner.local_daemon import runner_dir

    model = hashlib.sha256(config.model.base_model.encode()).hexdigest()[:16]
    with FileLock(str(runner_dir(loops_home(backend.home)) / f"provision-{model}.lock")):
        yield


def _reuse_session(config: RunnerConfig, home: Path | None) -> str | None:
    wanted = config.session.reuse_from_session_id
    if wanted != "auto":
        return wanted
    if home is None:  # "auto" only means something where we remember sessions
        return None
    return _remembered_session(home, config.model.base_model)


def build_service_client(config: RunnerConfig) -> Any:
    from loops_runner.sdk import ServiceClient

    backend = config.backend
    if isinstance(backend, LocalBackend):
        home = loops_home(backend.home)
        reconnect = None
        if backend.control_plane_url:
            url, api_key = backend.control_plane_url, os.environ.get("BASETEN_API_KEY")
        else:
            from loops_runner.runner.local_daemon import (
                ensure_control_plane,
                reconnect_control_plane,
            )

            daemon = ensure_control_plane(home, backend.idle_timeout_s,
                                          backend.runs_per_trainer)
            url, api_key = daemon.url, daemon.api_key
            # The runner owns this daemon: if it dies mid-run, the clients start
            # it again and carry on with the same session, run and trainer.
            reconnect = functools.partial(reconnect_control_plane, home,
                                          backend.idle_timeout_s, backend.runs_per_trainer)
        return ServiceClient(api_key=api_key, base_url=url,
                             reuse_from_session_id=_reuse_session(config, home),
                             reconnect=reconnect)
    if isinstance(backend, BasetenBackend):
        api_key = os.environ.get(backend.api_key_env)
        if not api_key:
            raise ConfigError(f"backend=baseten needs an API key in ${backend.api_key_env}")
        return ServiceClient(backend.training_project_id, api_key=api_key,
                             base_url=backend.base_url,
                             reuse_from_session_id=_reuse_session(config, None))
    assert isinstance(backend, ExternalBackend)
    return ServiceClient.local(trainer_url=backend.trainer_url, sampler_url=backend.sampler_url)
