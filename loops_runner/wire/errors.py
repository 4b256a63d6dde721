"""Error bodies: the control-plane/trainer shape and the vLLM shape of the sampler."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ErrorDetails(BaseModel):
    reason: str


class ErrorBody(BaseModel):
    """``{"detail": "...", "details": {"reason": "CODE"}}`` (spec 2.2)."""

    detail: str
    details: ErrorDetails | None = None


class VllmError(BaseModel):
    type: Literal["BadRequestError"] = "BadRequestError"
    message: str
    param: str | None = None
    code: int = 400


class VllmErrorBody(BaseModel):
    """The sampler's invalid-request body; clients never retry it (spec 2.2)."""

    error: VllmError


class OpenAIError(BaseModel):
    """OpenAI's error object: ``type`` is ``invalid_request_error`` for every 4xx."""

    message: str
    type: Literal["invalid_request_error", "server_error"] = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """The sampler's OpenAI routes' error body, and its 404/405 for what it lacks."""

    error: OpenAIError
