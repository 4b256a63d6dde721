"""Request bodies of the OpenAI routes, with OpenAI's limits, and its error body.

Limits follow OpenAI's API reference so a request OpenAI refuses is refused
here too, with a 400 that names the parameter: ``temperature`` 0-2, penalties
-2..2, ``logit_bias`` values -100..100, at most 4 stop strings, ``n`` at most
128, ``top_logprobs`` 0-20 and only with ``logprobs``, ``best_of`` >= ``n``
(and never above ``n`` while streaming). Where we are stricter than OpenAI it
is because the model cannot do it: tools and JSON mode (see ``refuse_unsupported``).
vLLM's extras (``top_k``, ``ignore_eos``, ``stop_token_ids``,
``structured_outputs``, ``echo`` with ``max_tokens=0``) are accepted as vLLM does.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loops_runner.servers.common import InvalidRequest
from loops_runner.servers.sampler.protocol import logit_bias_ids
from loops_runner.wire.errors import OpenAIError, OpenAIErrorBody

MAX_STOP_STRINGS = 4
MAX_N = 128
MAX_BEST_OF = 20
# OpenAI's chat limit; also ours for the legacy completions ``logprobs`` (OpenAI
# says 5 there, vLLM 20: eval harnesses that ask for more than 5 keep working).
MAX_TOP_LOGPROBS = 20


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAIRequest(BaseModel):
    """What both routes take."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    structured_outputs: dict[str, Any] | None = None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionsRequest(OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF)
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionsRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


def check_common(body: OpenAIRequest, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """The rules across fields that both routes share; returns ``logit_bias`` as ids."""
    stops = body.stop_strings()
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"stop has {len(stops)} strings; at most {MAX_STOP_STRINGS} "
                             "are allowed", "stop")
    if any(not stop for stop in stops):
        raise InvalidRequest("stop strings must be non-empty", "stop")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("stream_options is only allowed when stream is true",
                             "stream_options")
    if body.repetition_penalty not in (None, 1.0):
        raise InvalidRequest("repetition_penalty is not supported by this sampler (send 1); "
                             "use presence_penalty or frequency_penalty",
                             "repetition_penalty")
    return logit_bias_ids(body.logit_bias, vocab_size)


def check_completions(body: CompletionsRequest) -> int:
    """Completions-only rules; returns how many samples to draw per prompt (``best_of``)."""
    if body.suffix:
        raise InvalidRequest("suffix is not supported by this sampler", "suffix")
    best_of = body.best_of or body.n
    if best_of < body.n:
        raise InvalidRequest(f"best_of ({best_of}) must be at least n ({body.n})", "best_of")
    if body.stream and best_of != body.n:
        raise InvalidRequest("best_of cannot exceed n when streaming (the best ones are "
                             "known only at the end)", "best_of")
    if body.max_tokens == 0 and not body.echo:
        raise InvalidRequest("max_tokens must be at least 1 (0 is allowed with echo=true)",
                             "max_tokens")
    if body.max_tokens == 0 and body.stream:
        raise InvalidRequest("max_tokens=0 (prompt scoring) cannot be streamed", "max_tokens")
    return best_of


def check_chat(body: ChatCompletionsRequest) -> None:
    """Chat-only rules: ``top_logprobs`` needs ``logprobs``; tools and JSON mode refused."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true", "top_logprobs")
    if body.tools or body.functions:
        name = "tools" if body.tools else "functions"
        raise InvalidRequest(f"{name} (function calling) is not supported by this sampler: "
                             "its models have no tool-call format; send no tools", name)
    if body.tool_choice not in (None, "none"):
        raise InvalidRequest("tool_choice is not supported by this sampler (no tools)",
                             "tool_choice")
    kind = (body.response_format or {}).get("type")
    if kind not in (None, "text"):
        raise InvalidRequest(f"response_format {kind!r} (JSON mode) is not supported by this "
                             "sampler; send response_format text, or constrain the output "
                             "with structured_outputs {\"regex\": ...}", "response_format")


def openai_error(status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None,
                 ) -> JSONResponse:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = OpenAIErrorBody(error=OpenAIError(message=message, type=kind, param=param,
                                             code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)
