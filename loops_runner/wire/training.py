"""Trainer operation bodies and their results (spec section 4)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loops_runner.wire.model_input import Datum
from loops_runner.wire.names import StorageName
from loops_runner.wire.tensors import TensorData

LossFnType = Literal[
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "dpo", "dppo"
]
LOSS_FNS: tuple[str, ...] = LossFnType.__args__  # type: ignore[attr-defined]
MAX_TOP_K_LOGPROBS = 20


class OperationRequest(BaseModel):
    """Fields the SDK adds to every trainer operation body (spec 4.3).

    Unknown fields are ignored: the SDK adds fields across versions.
    """

    model_config = ConfigDict(extra="ignore")

    seq_id: int | None = Field(default=None, ge=1)
    run_id: str | None = None
    model: str | None = None


class InitTrainerServerRequest(OperationRequest):
    lora_rank: int = Field(ge=1, le=1024)
    base_model: str
    # Not sent by the official SDK; lets a runner make the adapter init
    # reproducible per run (the trainer uses a fixed default otherwise).
    seed: int | None = None


class ForwardBackwardRequest(OperationRequest):
    data: list[Datum] = Field(default_factory=list)
    loss_fn: LossFnType = "cross_entropy"
    loss_fn_config: dict[str, Any] | None = None
    top_k_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_K_LOGPROBS)


class AdamParams(BaseModel):
    """One AdamW step's hyper-parameters (the SDK's defaults)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    learning_rate: float = Field(default=1e-4, ge=0.0)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0)
    eps: float = Field(default=1e-12, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    grad_clip_norm: float = Field(default=1.0, ge=0.0)  # 0 disables clipping


class OptimStepRequest(OperationRequest):
    adam_params: AdamParams = Field(default_factory=AdamParams)


class SaveStateRequest(OperationRequest):
    name: StorageName
    ttl_seconds: int | None = Field(default=None, ge=1)


class SaveWeightsForSamplerRequest(OperationRequest):
    name: StorageName
    ttl_seconds: int | None = Field(default=None, ge=1)
    bump_version: bool = False


class LoadStateRequest(OperationRequest):
    path: str = Field(min_length=1)


class InitTrainerServerResponse(BaseModel):
    step: int = 0
    lora_rank: int


class ForwardBackwardOutput(BaseModel):
    loss: float = 0.0
    loss_fn_output_type: str = "ArrayRecord"
    loss_fn_outputs: list[dict[str, TensorData]] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)


class OptimStepResponse(BaseModel):
    metrics: dict[str, float] | None = None


class SaveWeightsResponse(BaseModel):
    mode: str = "state"
    path: str = ""


class SaveWeightsForSamplerResponse(BaseModel):
    version: int = 0
    path: str = ""


class LoadWeightsResponse(BaseModel):
    step: int = 0


class PolicyVersionResponse(BaseModel):
    policy_version: int


class WandbConfig(BaseModel):
    """Where a training client streams its metrics in Weights & Biases."""

    project: str
    name: str | None = None
