"""Checkpoint registry objects, file listings and sources (spec 3.9-3.10, 7)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class CheckpointTarget(StrEnum):
    trainer = "trainer"
    sampler = "sampler"


class LoraAdapterConfig(BaseModel):
    """The adapter shape; on the wire the rank is the key ``r`` (PEFT's name)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True, extra="allow")

    rank: int = Field(alias="r", ge=1)


class Checkpoint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = ""
    run_id: str
    checkpoint_id: str
    checkpoint_type: str
    created_at: datetime
    base_model: str
    lora_adapter_config: LoraAdapterConfig
    size_bytes: int = 0
    sync_status: str | None = None
    target: CheckpointTarget | None = None
    path: str | None = None
    expires_at: datetime | None = None
    step: int | None = None


class CheckpointListResponse(BaseModel):
    checkpoints: list[Checkpoint]


class CheckpointFile(BaseModel):
    url: str
    relative_file_name: str
    node_rank: int = 0
    size_bytes: int
    last_modified: datetime

    @field_validator("relative_file_name")
    @classmethod
    def _stays_inside(cls, value: str) -> str:
        parts = value.split("/")
        if not value or value.startswith("/") or ".." in parts or "" in parts:
            raise ValueError(f"relative_file_name {value!r} must stay inside the checkpoint")
        return value


class CheckpointFilesResponse(BaseModel):
    presigned_urls: list[CheckpointFile]
    next_page_token: int | None = None
    total_count: int


class S3CheckpointSource(BaseModel):
    kind: Literal["s3"] = "s3"


class VolumeCheckpointSource(BaseModel):
    kind: Literal["volume"] = "volume"
    volume_ref: str
    path: str


class CheckpointSourceResponse(BaseModel):
    source: Annotated[S3CheckpointSource | VolumeCheckpointSource, Field(discriminator="kind")]


class ValidateCheckpointRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    checkpoint_path: str
    run_id: str | None = None
