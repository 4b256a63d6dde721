"""The async-operation protocol: submit acceptance and poll answers (spec 4.1)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


class OperationAccepted(BaseModel):
    """Body of a 202 answer to an operation submit."""

    operation_id: str = Field(min_length=1)
    schema_version: Literal[1] = 1


class OperationDone(BaseModel):
    status: Literal["done"] = "done"
    result: dict[str, Any]


class OperationFailed(BaseModel):
    status: Literal["error"] = "error"
    error: str
    error_class: str | None = None


OperationPoll = Annotated[OperationDone | OperationFailed, Field(discriminator="status")]
