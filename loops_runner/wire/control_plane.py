"""Control-plane bodies: sessions, runs (trainers), samplers, deployments (spec 3)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AvailabilityModel(StrEnum):
    """Capacity a run or sampler runs on; ``spot`` may be reclaimed (no resume)."""

    dedicated = "dedicated"
    spot = "spot"


class TrainerScope(StrEnum):
    """Where a run's trainer runs (Baseten-internal organisations choose)."""

    default = "default"  # the organisation's setting
    serverless = "serverless"  # the shared pool
    team = "team"  # the team's worker pool
    deployment = "deployment"  # the run's own trainer deployment


class SamplerScope(StrEnum):
    """Where a standalone sampler runs (``team`` is for trainers only)."""

    default = "default"
    serverless = "serverless"
    deployment = "deployment"


class CreateSessionRequest(BaseModel):
    """SDK 0.32 sends no body at all; older clients send the project id."""

    model_config = ConfigDict(extra="ignore")

    training_project_id: str | None = None


class SessionInfo(BaseModel):
    id: str
    training_project_id: str | None = None
    created_at: datetime | None = None


class SessionResponse(BaseModel):
    session: SessionInfo


class CreateTrainerRequest(BaseModel):
    # Enum values are kept as plain strings: stores and logs see "dedicated".
    model_config = ConfigDict(extra="ignore", use_enum_values=True)

    session_id: str
    base_model: str = Field(min_length=1)
    lora_rank: int = Field(default=32, ge=1, le=1024)
    replicas: int = Field(default=1, ge=1)
    availability_model: AvailabilityModel = Field(default=AvailabilityModel.dedicated,
                                                 validate_default=True)
    seed: int | None = None
    max_seq_len: int | None = Field(default=None, ge=1)
    name: str | None = None
    base_checkpoint: str | None = None
    path: str | None = None
    reuse_from_run_id: str | None = None
    reuse_from_session_id: str | None = None
    scale_down_delay_seconds: int | None = Field(default=None, ge=0)
    debug_version: str | None = None
    # Sent (on the /debug/ create route) only when not "default".
    scope: TrainerScope | None = None


class SamplerInfo(BaseModel):
    id: str
    base_url: str | None
    model_id: str | None = None
    deployment_id: str | None = None
    base_checkpoint: str | None = None
    base_model: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    status: str | None = None
    reason: str | None = None
    model_path: str | None = None
    created_at: datetime | None = None


class RunInfo(BaseModel):
    id: str
    base_model: str
    base_url: str | None
    deployment_id: str | None = None
    base_checkpoint: str | None = None
    session_id: str | None = None
    lora_rank: int | None = None
    name: str | None = None
    status: str | None = None
    # Why the run is FAILED/STOPPED (its trainer died, went idle, ...).
    reason: str | None = None
    # True when the run was attached to an earlier run's warm trainer.
    reused: bool | None = None
    replicas: int | None = None
    created_at: datetime | None = None
    sampler: SamplerInfo | None = None


class RunResponse(BaseModel):
    run: RunInfo


class CreateSamplerRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=True)

    session_id: str | None = None
    availability_model: AvailabilityModel = Field(default=AvailabilityModel.dedicated,
                                                 validate_default=True)
    base_model: str | None = None
    model_path: str | None = None
    run_id: str | None = None
    max_seq_length: int | None = Field(default=None, ge=1)
    reuse_from_session_id: str | None = None
    num_replicas: int | None = Field(default=None, ge=1)
    debug_version: str | None = None
    scope: SamplerScope | None = None


class SamplerResponse(BaseModel):
    sampler: SamplerInfo


class DeploymentStatus(BaseModel):
    name: str
    reason: str | None = None
    updated_at: datetime | None = None


class TrainerDeployment(BaseModel):
    """A trainer or sampler server process as the control plane presents it."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: DeploymentStatus
    base_model: str | None = None
    base_url: str | None = None
    sampler: SamplerInfo | None = None
    kind: Literal["trainer", "sampler"] | None = None
    role: str | None = None
    model_id: str | None = None
    pid: int | None = None
    restarts: int | None = None
    created_at: datetime | None = None
    run_ids: list[str] = Field(default_factory=list)
    status_history: list[DeploymentStatus] = Field(default_factory=list)


class TrainerDeploymentResponse(BaseModel):
    deployment: TrainerDeployment


class SamplerStatusResponse(BaseModel):
    """``GET /v1/models/{model_id}/deployments/{deployment_id}``: ``ACTIVE`` = ready."""

    status: str
    reason: str | None = None


class SupportedModel(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    max_context_length: int | None = None
    device_classes: list[str] = Field(default_factory=list)


class ServerCapabilities(BaseModel):
    supported_models: list[SupportedModel]
    device_classes: list[str] = Field(default_factory=list)


class DeploymentListResponse(BaseModel):
    deployments: list[TrainerDeployment]


class RunListResponse(BaseModel):
    runs: list[RunInfo]


class SamplerListResponse(BaseModel):
    samplers: list[SamplerInfo]


class Team(BaseModel):
    id: str
    name: str


class TeamsResponse(BaseModel):
    teams: list[Team]
