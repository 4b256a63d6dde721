"""The public types of the client API (names as in the Baseten Loops SDK).

Wire types come from ``loops_runner.wire`` (one definition for client and
servers); the few types that never travel (``get_info``, downloads) are here.
"""

from pathlib import Path

from pydantic import BaseModel, Field

from loops_runner.wire import (
    AdamParams,
    AvailabilityModel,
    Checkpoint,
    CheckpointFile,
    CheckpointFilesResponse,
    CheckpointTarget,
    Datum,
    EncodedTextChunk,
    ExternalRef,
    ForwardBackwardOutput,
    ImageChunk,
    InitTrainerServerResponse,
    LoadWeightsResponse,
    LoraAdapterConfig,
    LossFnType,
    ModelInput,
    ModelInputChunk,
    OptimStepResponse,
    SampledSequence,
    SampleResponse,
    SamplingParams,
    SaveWeightsForSamplerResponse,
    SaveWeightsResponse,
    ServerCapabilities,
    StopReason,
    SupportedModel,
    TensorData,
    WandbConfig,
)


class ModelData(BaseModel):
    """What ``TrainingClient.get_info`` knows about the model."""

    model_config = {"protected_namespaces": ()}

    arch: str | None = None
    model_name: str | None = None
    tokenizer_id: str | None = None


class GetInfoResponse(BaseModel):
    """``TrainingClient.get_info()``: the run's model and adapter shape (no server call)."""

    model_config = {"protected_namespaces": ()}

    model_data: ModelData = Field(default_factory=ModelData)
    model_name: str | None = None
    is_lora: bool | None = None
    lora_rank: int | None = None
    max_seq_len: int | None = None


class CheckpointDownload(BaseModel):
    """Where ``download_checkpoint`` wrote a checkpoint's files."""

    dest_dir: Path
    file_count: int
    bytes_written: int


__all__ = [
    "AdamParams",
    "AvailabilityModel",
    "Checkpoint",
    "CheckpointDownload",
    "CheckpointFile",
    "CheckpointFilesResponse",
    "CheckpointTarget",
    "Datum",
    "EncodedTextChunk",
    "ExternalRef",
    "ForwardBackwardOutput",
    "GetInfoResponse",
    "ImageChunk",
    "InitTrainerServerResponse",
    "LoadWeightsResponse",
    "LoraAdapterConfig",
    "LossFnType",
    "ModelData",
    "ModelInput",
    "ModelInputChunk",
    "OptimStepResponse",
    "SampleResponse",
    "SampledSequence",
    "SamplingParams",
    "SaveWeightsForSamplerResponse",
    "SaveWeightsResponse",
    "ServerCapabilities",
    "StopReason",
    "SupportedModel",
    "TensorData",
    "WandbConfig",
]
