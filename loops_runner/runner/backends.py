"""The configured backend as an object (local, baseten or external): its data home, its
ServiceClient, where it remembers sessions, how its checkpoints are removed."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterator
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


class Backend:
    """The service a run uses, and everything that differs between the kinds.

    Built once per job from ``config.backend`` (:func:`backend_of`); the rest of
    the runner asks it instead of switching on the config's class, and recipes
    never see it (``ctx`` answers what a recipe needs).
    """

    # When the command ends with session.keep_warm unset: keep its trainers running?
    keeps_warm_by_default = False
    # False where the user started the servers (external): there is nothing to stop.
    provisions = True

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config

    @property
    def kind(self) -> str:
        return self.config.backend.kind

    @property
    def data_home(self) -> Path | None:
        """The data home this process shares with the servers (local), else None."""
        return None

    def model_home(self) -> Path:
        """Where local model names (``tiny``) resolve to their files."""
        return loops_home(None)

    def service_client(self) -> Any:
        raise NotImplementedError

    def sessions_file(self) -> Path | None:
        """Where "auto" reuse remembers sessions (None: nowhere, always fresh)."""
        return None

    def cli_flags(self) -> str:
        """The ``loops-runner runs ...`` flags that reach this backend's service."""
        return ""

    def checkpoint_remover(self) -> Callable[[Any], bool] | None:
        """How checkpoints leave the service's storage (None: it offers no delete)."""
        return None


class LocalService(Backend):
    """The embedded control plane (a daemon in the data home) or one at a given URL."""

    keeps_warm_by_default = True

    @property
    def backend(self) -> LocalBackend:
        return self.config.backend  # type: ignore[return-value]

    @property
    def data_home(self) -> Path:
        return loops_home(self.backend.home)

    def model_home(self) -> Path:
        return self.data_home

    def sessions_file(self) -> Path:
        from loops_runner.runner.local_daemon import runner_dir

        return runner_dir(self.data_home) / SESSIONS_FILE

    def cli_flags(self) -> str:
        return f" --home {self.backend.home}" if self.backend.home else ""

    def checkpoint_remover(self) -> Callable[[Any], bool]:
        from loops_runner.runner.retention import remove_from_home

        return remove_from_home(self.data_home)

    def service_client(self) -> Any:
        from loops_runner.sdk import ServiceClient

        backend, reconnect = self.backend, None
        if backend.control_plane_url:
            url, api_key = backend.control_plane_url, os.environ.get("BASETEN_API_KEY")
        else:
            from loops_runner.runner.local_daemon import (
                ensure_control_plane,
                reconnect_control_plane,
            )

            daemon = ensure_control_plane(self.data_home, backend.idle_timeout_s,
                                          backend.runs_per_trainer)
            url, api_key = daemon.url, daemon.api_key
            # The runner owns this daemon: if it dies mid-run, the clients start
            # it again and carry on with the same session, run and trainer.
            reconnect = functools.partial(reconnect_control_plane, self.data_home,
                                          backend.idle_timeout_s, backend.runs_per_trainer)
        return ServiceClient(api_key=api_key, base_url=url,
                             reuse_from_session_id=_reuse_session(self),
                             reconnect=reconnect, **_session_options(self.config))


class BasetenService(Backend):
    """Baseten's hosted Loops: billed while it runs, so stopped at the end by default."""

    @property
    def backend(self) -> BasetenBackend:
        return self.config.backend  # type: ignore[return-value]

    def sessions_file(self) -> Path | None:
        # A hosted session is remembered only within a sweep, whose end stops it; a
        # later command starts fresh unless it names a session to reuse.
        from loops_runner.runner.sweep import current_sweep_dir

        sweep_dir = current_sweep_dir()
        if sweep_dir is None:
            return None
        sweep_dir.mkdir(parents=True, exist_ok=True)
        return sweep_dir / SWEEP_REUSE_FILE

    def cli_flags(self) -> str:
        backend = self.backend
        flags = f" --base-url {backend.base_url}" if backend.base_url else ""
        if backend.api_key_env != "BASETEN_API_KEY":
            flags += f" --api-key-env {backend.api_key_env}"
        return flags

    def service_client(self) -> Any:
        from loops_runner.sdk import ServiceClient

        backend = self.backend
        api_key = os.environ.get(backend.api_key_env)
        if not api_key:
            raise ConfigError(f"backend=baseten needs an API key in ${backend.api_key_env}")
        return ServiceClient(backend.training_project_id, api_key=api_key,
                             base_url=backend.base_url,
                             reuse_from_session_id=_reuse_session(self),
                             **_session_options(self.config))


class ExternalServers(Backend):
    """A trainer and a sampler the user started: no control plane, nothing to stop."""

    provisions = False

    @property
    def backend(self) -> ExternalBackend:
        return self.config.backend  # type: ignore[return-value]

    def service_client(self) -> Any:
        from loops_runner.sdk import ServiceClient

        for key in ("team", "availability_model", "scope"):
            if getattr(self.config.service, key) is not None:
                raise ConfigError(f"service.{key} is chosen when a control plane provisions "
                                  "the trainer; backend=external uses servers that already run")
        return ServiceClient.local(trainer_url=self.backend.trainer_url,
                                   sampler_url=self.backend.sampler_url)


_BACKENDS: dict[str, type[Backend]] = {"local": LocalService, "baseten": BasetenService,
                                       "external": ExternalServers}


def backend_of(config: RunnerConfig) -> Backend:
    return _BACKENDS[config.backend.kind](config)


def _remembered_session(path: Path, base_model: str) -> str | None:
    sessions = read_json(path)
    return sessions.get(base_model) if isinstance(sessions, dict) else None


def remember_session(backend: Backend, session_id: str) -> None:
    """Note the session so the next run of this base model (here or in the sweep) reuses it."""
    config = backend.config
    path = backend.sessions_file()
    if path is None:
        return
    # Parallel jobs of different base models must not drop each other's entry.
    with FileLock(str(path) + ".lock"):
        sessions = read_json(path)
        sessions = sessions if isinstance(sessions, dict) else {}
        sessions[config.model.base_model] = session_id
        atomic_write_json(path, sessions)


@contextmanager
def provisioning_turn(backend: Backend) -> Iterator[None]:
    """Jobs take turns from picking a session to reuse until they remembered theirs.

    Only where sessions are remembered (reuse "auto"): without turns, every
    job of a parallel sweep on a fresh data home would find no session to
    reuse and provision a trainer of its own. The first job provisions and
    remembers; the others then reuse its warm trainer.
    """
    config = backend.config
    path = backend.sessions_file() if config.session.reuse_from_session_id == "auto" else None
    if path is None:
        yield
        return
    model = hashlib.sha256(config.model.base_model.encode()).hexdigest()[:16]
    with FileLock(str(path.parent / f"provision-{model}.lock")):
        yield


def _reuse_session(backend: Backend) -> str | None:
    wanted = backend.config.session.reuse_from_session_id
    if wanted != "auto":
        return wanted
    path = backend.sessions_file()
    # "auto" only means something where sessions are remembered.
    return _remembered_session(path, backend.config.model.base_model) if path else None


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


def _session_options(config: RunnerConfig) -> dict[str, Any]:
    return {"team": config.service.team,
            "availability_model": config.service.availability_model}
