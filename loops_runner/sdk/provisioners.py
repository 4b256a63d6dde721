"""Where a ``ServiceClient``'s trainers and samplers come from: two provisioners.

``ServiceClient(...)`` provisions through a control plane
(:class:`ControlPlaneProvisioner`: a session, runs, standalone samplers, the
checkpoint registry); ``ServiceClient.local(...)`` binds to a trainer and a
sampler that already run (:class:`DirectProvisioner`, spec 8). The client
chooses one when it is made and every create goes through it, so neither mode
branches inside the other's code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from loops_runner.sdk.control_plane import ControlPlaneClient, Reconnect
from loops_runner.sdk.deployments import (
    SamplerEndpoint,
    TrainerEndpoint,
    wait_for_sampler,
    wait_for_trainer,
)
from loops_runner.sdk.errors import LoopsError
from loops_runner.sdk.sampling_client import SamplingClient
from loops_runner.sdk.training_client import TrainingClient
from loops_runner.wire import (
    AvailabilityModel,
    CreateSamplerRequest,
    CreateTrainerRequest,
    SamplerScope,
    TrainerScope,
    WandbConfig,
)

logger = logging.getLogger("loops_runner.sdk")

LOCAL_SESSION_ID = "local"


@dataclass(frozen=True)
class TrainerSpec:
    """A training client's request, checked by ``ServiceClient`` (names as in its API)."""

    base_model: str
    rank: int
    seed: int | None
    timeout: float
    ready_timeout: float
    wandb_config: WandbConfig | None
    max_seq_len: int | None
    name: str | None
    with_sampler: bool
    sampler_timeout: float | None
    replicas: int
    sampler_num_replicas: int | None
    scope: TrainerScope | None
    base_checkpoint: str | None
    checkpoint_path: str | None  # a from-state create: the checkpoint it loads


@dataclass(frozen=True)
class SamplerSpec:
    """A standalone sampler's request: exactly one of ``base_model`` and ``model_path``."""

    base_model: str | None
    model_path: str | None
    timeout: float | None
    ready_timeout: float
    max_seq_len: int | None
    num_replicas: int | None
    scope: SamplerScope | None


class Provisioner(Protocol):
    session_id: str
    availability_model: AvailabilityModel
    # None where there is no control plane (the direct mode).
    control_plane: ControlPlaneClient | None

    @property
    def base_url(self) -> str: ...

    def training_client(self, spec: TrainerSpec) -> TrainingClient: ...

    def sampling_client(self, spec: SamplerSpec) -> SamplingClient: ...

    def describe(self) -> str: ...


class ControlPlaneProvisioner:
    """Runs and samplers created by a control plane, in one session of it."""

    def __init__(self, control_plane: ControlPlaneClient, *, training_project_id: str | None,
                 availability_model: AvailabilityModel, reuse_from_run_id: str | None,
                 reuse_from_session_id: str | None, reconnect: Reconnect | None) -> None:
        self.control_plane: ControlPlaneClient | None = control_plane
        self._cp = control_plane
        self.availability_model = availability_model
        self._reuse_from_run_id = reuse_from_run_id
        self._reuse_from_session_id = reuse_from_session_id
        self._reconnect = reconnect
        self.session_id = control_plane.create_session(training_project_id)
        logger.info("Loops session %s on %s", self.session_id, control_plane.base_url)

    @property
    def base_url(self) -> str:
        """Where the control plane listens now (a reconnect may move it)."""
        return self._cp.base_url

    def training_client(self, spec: TrainerSpec) -> TrainingClient:
        if spec.base_checkpoint is not None and (self._reuse_from_run_id is not None
                                                 or self._reuse_from_session_id is not None):
            raise ValueError("base_checkpoint cannot be combined with trainer reuse: create the "
                             "ServiceClient without reuse_from_run_id / reuse_from_session_id")
        control_plane = self._cp
        request = CreateTrainerRequest(
            session_id=self.session_id, base_model=spec.base_model, lora_rank=spec.rank,
            replicas=spec.replicas, availability_model=self.availability_model, seed=spec.seed,
            max_seq_len=spec.max_seq_len, name=spec.name, path=spec.checkpoint_path,
            base_checkpoint=spec.base_checkpoint, scope=spec.scope,
            reuse_from_run_id=self._reuse_from_run_id,
            reuse_from_session_id=None if self._reuse_from_run_id is not None
            else self._reuse_from_session_id)
        run = control_plane.create_trainer(request)
        endpoint = TrainerEndpoint.from_run(run)
        logger.info("Loops run %s (%s trainer at %s, model %s)", run.id, endpoint.kind,
                    endpoint.base_url, run.base_model)
        paired = None
        if run.sampler is not None and run.sampler.base_url:
            paired = SamplerEndpoint.from_info(run.sampler)
        elif spec.with_sampler:
            try:
                paired = SamplerEndpoint.from_info(control_plane.create_sampler(
                    CreateSamplerRequest(session_id=self.session_id, run_id=run.id,
                                         num_replicas=spec.sampler_num_replicas)))
            except LoopsError as exc:
                logger.warning("creating the paired sampler of run %s failed (%s); it will "
                               "be created at the first sampling request", run.id, exc)
        # Everything after this uses the name the control plane answered with.
        wait_for_trainer(control_plane, endpoint, base_model=run.base_model, run_id=run.id,
                         ready_timeout=spec.ready_timeout)
        return TrainingClient(
            endpoint, lora_rank=spec.rank, base_model=run.base_model, run_id=run.id,
            api_key=control_plane.api_key, timeout=spec.timeout,
            ready_timeout=spec.ready_timeout, sampler_timeout=spec.sampler_timeout,
            api_base_url=control_plane.base_url, control_plane_reconnect=self._reconnect,
            session_id=self.session_id, paired_sampling_deployment=paired,
            wandb_config=spec.wandb_config, max_seq_len=spec.max_seq_len,
            base_checkpoint=run.base_checkpoint, seed=spec.seed,
            sampler_num_replicas=spec.sampler_num_replicas)

    def sampling_client(self, spec: SamplerSpec) -> SamplingClient:
        control_plane = self._cp
        base_model = spec.base_model
        if spec.model_path is not None:
            base_model = control_plane.checkpoint_by_path(spec.model_path).base_model
        assert base_model is not None
        request = CreateSamplerRequest(
            session_id=self.session_id, availability_model=self.availability_model,
            base_model=None if spec.model_path is not None else base_model,
            model_path=spec.model_path, max_seq_length=spec.max_seq_len,
            num_replicas=spec.num_replicas, scope=spec.scope,
            reuse_from_session_id=self._reuse_from_session_id)
        sampler = control_plane.create_sampler(request)
        endpoint = SamplerEndpoint.from_info(sampler)
        logger.info("Loops sampler %s (%s) at %s", endpoint.sampler_id, endpoint.kind,
                    endpoint.base_url)
        wait_for_sampler(control_plane, endpoint, spec.ready_timeout)
        return SamplingClient(base_model=base_model, endpoint=endpoint,
                              api_key=control_plane.api_key,
                              timeout=spec.timeout, ready_timeout=spec.ready_timeout,
                              session_id=self.session_id, checkpoint_path=spec.model_path)

    def describe(self) -> str:
        return self.base_url


class DirectProvisioner:
    """A trainer and a sampler that already run: no control plane, no API key (spec 8).

    Training and sampling work; saving, loading, publishing and the checkpoint
    registry need a run and a control plane, and are refused. Options that only
    a control plane chooses (replicas, scope, ...) are refused by name.
    """

    session_id = LOCAL_SESSION_ID
    availability_model = AvailabilityModel.dedicated
    control_plane: ControlPlaneClient | None = None
    base_url = ""

    def __init__(self, trainer_url: str, sampler_url: str) -> None:
        self.trainer_url = trainer_url.rstrip("/")
        self.sampler_url = sampler_url.rstrip("/")

    def training_client(self, spec: TrainerSpec) -> TrainingClient:
        _refuse_chosen_by_control_plane("trainer", {
            "replicas": spec.replicas if spec.replicas != 1 else None, "scope": spec.scope,
            "base_checkpoint": spec.base_checkpoint,
            "sampler_num_replicas": spec.sampler_num_replicas})
        return TrainingClient(
            self.trainer_url, lora_rank=spec.rank, base_model=spec.base_model,
            timeout=spec.timeout, ready_timeout=spec.ready_timeout,
            sampler_timeout=spec.sampler_timeout,
            paired_sampling_deployment=SamplerEndpoint(self.sampler_url),
            wandb_config=spec.wandb_config, max_seq_len=spec.max_seq_len, seed=spec.seed)

    def sampling_client(self, spec: SamplerSpec) -> SamplingClient:
        if spec.model_path is not None:
            raise ValueError("model_path needs a control plane to find the checkpoint; "
                             "ServiceClient.local(...) talks to a sampler that already runs")
        _refuse_chosen_by_control_plane("sampler", {
            "max_seq_len": spec.max_seq_len, "num_replicas": spec.num_replicas,
            "scope": spec.scope})
        assert spec.base_model is not None
        return SamplingClient(base_model=spec.base_model,
                              endpoint=SamplerEndpoint(self.sampler_url),
                              timeout=spec.timeout, ready_timeout=spec.ready_timeout)

    def describe(self) -> str:
        return f"local trainer={self.trainer_url}"


def _refuse_chosen_by_control_plane(server: str, chosen: dict[str, Any]) -> None:
    for option, value in chosen.items():
        if value is not None:
            raise ValueError(f"{option}={value!r} is chosen when a control plane provisions "
                             f"the {server}; ServiceClient.local(...) talks to servers that "
                             "already run")
