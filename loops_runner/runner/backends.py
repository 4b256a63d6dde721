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
SWEEP_REUSE_FILE = "service_reuse.json"  # in a sweep dir: its hosted sessions, by base model


def sessions_file(config: RunnerConfig) -> Path | None:
    """Where "auto" reuse remembers sessions: the data home (local), or the sweep.

    A hosted session is remembered only within a sweep, whose end stops it; a
    later command starts fresh unless it names a session to reuse.
    """
    backend = config.backend
    if isinstance(backend, LocalBackend):
        from loops_runner.runner.local_daemon import runner_dir

        return runner_dir(loops_home(backend.home)) / SESSIONS_FILE
    if isinstance(backend, BasetenBackend):
        from loops_runner.runner.sweep import current_sweep_dir

        sweep_dir = current_sweep_dir()
        if sweep_dir is not None:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            return sweep_dir / SWEEP_REUSE_FILE
    return None


def _remembered_session(path: Path, base_model: str) -> str | None:
    sessions = read_json(path)
    return sessions.get(base_model) if isinstance(sessions, dict) else None


def remember_session(config: RunnerConfig, session_id: str) -> None:
    """Note the session so the next run of this base model (here or in the sweep) reuses it."""
    path = sessions_file(config)
    if path is None:
        return
    # Parallel jobs of different base models must not drop each other's entry.
    with FileLock(str(path) + ".lock"):
        sessions = read_json(path)
        sessions = sessions if isinstance(sessions, dict) else {}
        sessions[config.model.base_model] = session_id
        atomic_write_json(path, sessions)


@contextmanager
def provisioning_turn(config: RunnerConfig) -> Iterator[None]:
    """Jobs take turns from picking a session to reuse until they remembered theirs.

    Only where sessions are remembered (reuse "auto"): without turns, every
    job of a parallel sweep on a fresh data home would find no session to
    reuse and provision a trainer of its own. The first job provisions and
    remembers; the others then reuse its warm trainer.
    """
    path = sessions_file(config) if config.session.reuse_from_session_id == "auto" else None
    if path is None:
        yield
        return
    model = hashlib.sha256(config.model.base_model.encode()).hexdigest()[:16]
    with FileLock(str(path.parent / f"provision-{model}.lock")):
        yield


def _reuse_session(config: RunnerConfig) -> str | None:
    wanted = config.session.reuse_from_session_id
    if wanted != "auto":
        return wanted
    path = sessions_file(config)
    # "auto" only means something where sessions are remembered.
    return _remembered_session(path, config.model.base_model) if path else None


def provision_options(config: RunnerConfig, run_name: str) -> dict[str, Any]:
    """The create options of every provisioning path (fresh, resumed, init_from)."""
    service = config.service
    wandb_config = None
    if config.wandb.client_run:
        from loops_runner.wire import WandbConfig

        wandb_config = WandbConfig(project=config.wandb.project,
                                   name=config.wandb.name or run_name)
    return {"seed": config.seed, "timeout": config.timeouts.call_s,
            "ready_timeout": config.timeouts.ready_s, "max_seq_len": service.max_seq_len,
            "name": run_name, "with_sampler": service.with_sampler,
            "sampler_num_replicas": service.sampler_replicas, "scope": service.scope,
            "wandb_config": wandb_config}


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
                             reuse_from_session_id=_reuse_session(config),
                             reconnect=reconnect, **_session_options(config))
    if isinstance(backend, BasetenBackend):
        api_key = os.environ.get(backend.api_key_env)
        if not api_key:
            raise ConfigError(f"backend=baseten needs an API key in ${backend.api_key_env}")
        return ServiceClient(backend.training_project_id, api_key=api_key,
                             base_url=backend.base_url,
                             reuse_from_session_id=_reuse_session(config),
                             **_session_options(config))
    assert isinstance(backend, ExternalBackend)
    for key in ("team", "availability_model", "scope"):
        if getattr(config.service, key) is not None:
            raise ConfigError(f"service.{key} is chosen when a control plane provisions the "
                              "trainer; backend=external uses servers that already run")
    return ServiceClient.local(trainer_url=backend.trainer_url, sampler_url=backend.sampler_url)


def _session_options(config: RunnerConfig) -> dict[str, Any]:
    return {"team": config.service.team,
            "availability_model": config.service.availability_model}
