"""Sampler request/response bodies (spec section 6) and the client-side sample types."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loops_runner.wire.model_input import ExternalRef
from loops_runner.wire.names import StorageName

StopReason = Literal["stop", "length"]
MAX_PROMPT_LOGPROBS = 20


class SamplingParams(BaseModel):
    """What the caller asks of one ``sample`` call (client API)."""

    model_config = ConfigDict(allow_inf_nan=False)

    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: str | list[str] | list[int] | None = None
    temperature: float = Field(default=1.0, ge=0.0)
    top_k: int = -1
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    structured_outputs: dict[str, Any] | None = None


class SampleRequest(BaseModel):
    """``POST /sample`` body, vLLM-completions flavoured (spec 6.1)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: list[int] = Field(default_factory=list)
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = None
    logprobs: int | None = Field(default=0, ge=0)
    return_tokens_as_token_ids: bool = True
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    structured_outputs: dict[str, Any] | None = None
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_PROMPT_LOGPROBS)
    include_routed_experts: bool | None = None
    model_input_chunks: list[dict[str, Any]] | None = None
    return_token_ids: bool | None = None
    model: str | None = None
    lora: str | None = None
    # vLLM extra: keep generating past end-of-sequence (benchmarks, fixed-length rollouts).
    ignore_eos: bool = False
    # vLLM/OpenAI sampling extras (the SDK never sends them): penalties on tokens
    # already in the completion, and a bias added to chosen tokens' logits.
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionLogprobs(BaseModel):
    tokens: list[str | int]
    token_logprobs: list[float]
    # Only when the request asked for ``logprobs > 0``: per token, the top
    # alternatives as {"token_id:<n>" (or the token text): logprob}.
    top_logprobs: list[dict[str, float]] | None = None


class PromptLogprobEntry(BaseModel):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str = ""
    finish_reason: StopReason = "length"
    token_ids: list[int] | None = None
    logprobs: CompletionLogprobs | None = None
    prompt_token_ids: list[int] | None = None
    # One entry per prompt position: None at position 0 and where not computed,
    # else {"<token id>": {...}} holding the actual token plus the top k.
    prompt_logprobs: list[dict[str, PromptLogprobEntry] | None] | None = None
    routed_experts_ref: ExternalRef | None = None


class CompletionResponse(BaseModel):
    """``POST /sample`` 200 body."""

    id: str | None = None
    object: str = "text_completion"
    model: str | None = None
    choices: list[CompletionChoice]


class SampledSequence(BaseModel):
    """One completion, as the client API returns it."""

    tokens: list[int] = Field(default_factory=list)
    logprobs: list[float] | None = None
    stop_reason: StopReason = "length"
    text: str | None = None
    routed_experts: ExternalRef | None = None


class SampleResponse(BaseModel):
    """What ``SamplingClient.sample`` returns."""

    sequences: list[SampledSequence] = Field(default_factory=list)
    policy_version: int | None = None
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None


class LiveUpdateRequest(BaseModel):
    """``POST <paired sampler>/internal/live`` (trainer -> sampler weight sync).

    ``name`` null = drop the live adapter (serve the base model).
    """

    run_id: StorageName
    version: int = Field(ge=0)
    name: StorageName | None = None


class LiveUpdateResponse(BaseModel):
    run_id: str
    live: int
