"""OpenAI-compatible routes: ``POST /v1/completions`` and ``POST /v1/chat/completions``.

So everyday tools (the ``openai`` client, eval harnesses) can talk to the base
model or a trained adapter. ``model`` is an id from ``GET /v1/models``: the base
model, ``default`` (the live adapter of the default run, or of ``X-Run-Id``), or
a ``bt://loops:<run>/sampler_weights/<name>`` checkpoint path. Chat prompts use
the tokenizer's chat template. Streaming is not offered (refused with 400).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loops_runner.servers.common import InvalidRequest
from loops_runner.servers.openapi import answers
from loops_runner.servers.openapi import json_body as json_body_doc
from loops_runner.servers.sampler.adapters import BadCheckpointError, ServedWeights
from loops_runner.servers.sampler.engine import (
    GenerationJob,
    GenerationOutput,
    SamplingSpec,
)
from loops_runner.servers.sampler.protocol import (
    check_token_ids,
    constraint_pattern,
    resolve_max_tokens,
    top_k_setting,
)
from loops_runner.servers.sampler.routes import (
    POLICY_VERSION_HEADER,
    RUN_HEADER,
    json_body,
    validation_failure,
)
from loops_runner.servers.sampler.state import (
    ClientGoneError,
    SamplerState,
    generate_while_connected,
    sampler_state,
)
from loops_runner.wire.errors import OpenAIErrorBody

router = APIRouter()

MAX_OPENAI_LOGPROBS = 20


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str
    n: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    stream: bool = False
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    structured_outputs: dict[str, Any] | None = None


class CompletionsRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionsRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


def _error(status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": status}}, status_code=status)


_Body = TypeVar("_Body", bound=_Common)


def _refuse_unsupported(body: _Common) -> None:
    if body.stream:
        raise InvalidRequest("stream=true is not supported by this sampler; send stream=false",
                             "stream")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise InvalidRequest(f"{name} is not supported by this sampler (send 0)", name)
    if body.repetition_penalty not in (None, 1.0):
        raise InvalidRequest("repetition_penalty is not supported by this sampler (send 1)",
                             "repetition_penalty")
    if body.logit_bias:
        raise InvalidRequest("logit_bias is not supported by this sampler", "logit_bias")


def _spec(body: _Common, state: SamplerState, prompt: list[int], max_tokens: int | None,
          logprobs: int, prompt_logprobs: int | None,
          field: str = "max_tokens") -> SamplingSpec:
    limits = state.limits
    if not prompt:
        raise InvalidRequest("prompt must not be empty", "prompt")
    check_token_ids(prompt, "prompt", limits.vocab_size)
    if body.n > limits.max_n:
        raise InvalidRequest(f"n = {body.n} exceeds this sampler's limit of {limits.max_n}", "n")
    if logprobs > MAX_OPENAI_LOGPROBS:
        raise InvalidRequest(f"logprobs = {logprobs} exceeds the limit of "
                             f"{MAX_OPENAI_LOGPROBS}", "logprobs")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not stop for stop in stops):
        raise InvalidRequest("stop strings must be non-empty", "stop")
    stop_ids = list(body.stop_token_ids or [])
    check_token_ids(stop_ids, "stop_token_ids", limits.vocab_size)
    return SamplingSpec(
        max_tokens=resolve_max_tokens(max_tokens, len(prompt), limits, field),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k_setting(body.top_k, limits.vocab_size),
        seed=body.seed,
        stop=tuple(stops),
        stop_token_ids=tuple(stop_ids),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        regex=constraint_pattern(body.structured_outputs),
    )


async def _weights(state: SamplerState, request: Request, model: str) -> ServedWeights | None:
    try:
        return await state.store.for_model(model, request.headers.get(RUN_HEADER))
    except BadCheckpointError as exc:
        raise InvalidRequest(str(exc), RUN_HEADER) from exc


def _unknown_model(model: str) -> JSONResponse:
    return _error(404, "NotFoundError", f"The model `{model}` does not exist.", "model")


def _usage(prompts: list[list[int]], outputs: list[GenerationOutput]) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p in prompts)
    completion = sum(len(s.token_ids) for o in outputs for s in o.sequences)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def _prompts(prompt: str | list[str] | list[int] | list[list[int]],
             tokenizer: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        return [tokenizer(prompt)["input_ids"]]
    if not prompt:
        raise InvalidRequest("prompt must not be empty", "prompt")
    if all(isinstance(item, int) for item in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    if all(isinstance(item, str) for item in prompt):
        return [tokenizer(item)["input_ids"] for item in prompt]  # type: ignore[arg-type]
    return [list(item) for item in prompt]  # type: ignore[arg-type]


async def _run_all(request: Request, state: SamplerState,
                   jobs: list[GenerationJob]) -> list[GenerationOutput]:
    return list(await asyncio.gather(*(generate_while_connected(request, state.engine, job)
                                       for job in jobs)))


def _completion_logprobs(state: SamplerState, prompt: list[int], output: GenerationOutput,
                         index: int, echo: bool, k: int) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object: tokens, token_logprobs, top_logprobs, offsets."""
    text = state.token_text
    sequence = output.sequences[index]
    tokens: list[int] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if echo:
        positions = output.prompt_logprobs or [None] * len(prompt)
        for token, position in zip(prompt, positions, strict=False):
            tokens.append(token)
            values.append(None if position is None else position.logprob)
            if position is None:
                tops.append(None)
            else:
                tops.append({text(t): lp for t, lp in position.top[:k]}
                            | {text(token): position.logprob})
    tokens.extend(sequence.token_ids)
    values.extend(sequence.logprobs)
    for token, value, alternatives in zip(sequence.token_ids, sequence.logprobs,
                                          sequence.top_logprobs or [[]] * len(sequence.token_ids),
                                          strict=True):
        tops.append({text(t): lp for t, lp in alternatives[:k]} | {text(token): value})
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(text(token))
    return {"tokens": [text(t) for t in tokens], "token_logprobs": values,
            "top_logprobs": tops, "text_offset": offsets}


async def _parse_body(request: Request, model: type[_Body]) -> _Body:
    """JSON body -> validated request; unsupported OpenAI options refused alike."""
    payload = await json_body(request)
    try:
        body = model.model_validate(payload)
    except ValidationError as exc:
        raise validation_failure(exc) from exc
    _refuse_unsupported(body)
    return body


OPENAI_ERRORS = answers({"4XX": OpenAIErrorBody}) | {
    499: {"description": "the client went away before the answer"}}


@router.post("/v1/completions", openapi_extra=json_body_doc(CompletionsRequest),
             responses=OPENAI_ERRORS)
async def completions(request: Request) -> Response:
    state = sampler_state(request)
    try:
        body = await _parse_body(request, CompletionsRequest)
        if body.suffix:
            raise InvalidRequest("suffix is not supported by this sampler", "suffix")
        if body.best_of not in (None, body.n):
            raise InvalidRequest("best_of other than n is not supported by this sampler",
                                 "best_of")
        weights = await _weights(state, request, body.model)
        if weights is None:
            return _unknown_model(body.model)
        prompts = _prompts(body.prompt, state.engine.tokenizer)
        k = body.logprobs or 0
        # max_tokens=0 with echo only scores the prompt (eval harnesses do this).
        score_only = body.max_tokens == 0
        if score_only and not body.echo:
            raise InvalidRequest("max_tokens must be at least 1 (0 is allowed with echo=true)",
                                 "max_tokens")
        max_tokens = 1 if score_only else body.max_tokens
        wants_prompt = body.echo and body.logprobs is not None
        jobs = [GenerationJob(prompt, body.n,
                              _spec(body, state, prompt, max_tokens, k,
                                    k if wants_prompt else None),
                              weights.adapter)
                for prompt in prompts]
    except InvalidRequest as exc:
        return _error(400, "BadRequestError", str(exc), exc.param)
    try:
        outputs = await _run_all(request, state, jobs)
    except ClientGoneError:
        return Response(status_code=499)
    tokenizer = state.engine.tokenizer
    choices = []
    for prompt_index, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
        if score_only:
            for sequence in output.sequences:
                sequence.token_ids, sequence.logprobs, sequence.text = [], [], ""
                sequence.top_logprobs = [] if sequence.top_logprobs is not None else None
                sequence.finish_reason = "length"
        prompt_text = tokenizer.decode(prompt, skip_special_tokens=False) if body.echo else ""
        for index, sequence in enumerate(output.sequences):
            choices.append({
                "index": prompt_index * body.n + index,
                "text": prompt_text + sequence.text,
                "logprobs": (_completion_logprobs(state, prompt, output, index, body.echo, k)
                             if body.logprobs is not None else None),
                "finish_reason": sequence.finish_reason,
                "stop_reason": None,
            })
    return JSONResponse(
        {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
         "created": int(time.time()), "model": body.model, "choices": choices,
         "usage": _usage(prompts, outputs)},
        headers={POLICY_VERSION_HEADER: str(weights.version)})


def _message_text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        kind = part.get("type")
        if kind == "text":
            parts.append(str(part.get("text", "")))
        else:
            raise InvalidRequest(f"messages[{index}].content has a {kind!r} part; this sampler "
                                 "serves a text-only model", "messages")
    return "".join(parts)


def _chat_prompt(body: ChatCompletionsRequest, tokenizer: Any) -> list[int]:
    if body.tools:
        raise InvalidRequest("tools are not supported by this sampler", "tools")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise InvalidRequest(f"response_format {body.response_format.get('type')!r} is not "
                             "supported by this sampler", "response_format")
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequest("the base model's tokenizer has no chat template; use "
                             "/v1/completions", "messages")
    messages = [{"role": m.role, "content": _message_text(m, i)}
                for i, m in enumerate(body.messages)]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=True,
        add_generation_prompt=body.add_generation_prompt and not body.continue_final_message,
        continue_final_message=body.continue_final_message,
        **(body.chat_template_kwargs or {}))
    if isinstance(rendered, dict) or hasattr(rendered, "input_ids"):
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


def _chat_logprobs(state: SamplerState, output: GenerationOutput, index: int,
                   k: int) -> dict[str, Any]:
    text = state.token_text
    sequence = output.sequences[index]
    alternatives = sequence.top_logprobs or [[]] * len(sequence.token_ids)
    content = []
    for token, value, top in zip(sequence.token_ids, sequence.logprobs, alternatives,
                                 strict=True):
        piece = text(token)
        content.append({
            "token": piece, "logprob": value, "bytes": list(piece.encode()),
            "top_logprobs": [{"token": text(t), "logprob": lp, "bytes": list(text(t).encode())}
                             for t, lp in top[:k]],
        })
    return {"content": content}


@router.post("/v1/chat/completions", openapi_extra=json_body_doc(ChatCompletionsRequest),
             responses=OPENAI_ERRORS)
async def chat_completions(request: Request) -> Response:
    state = sampler_state(request)
    try:
        body = await _parse_body(request, ChatCompletionsRequest)
        weights = await _weights(state, request, body.model)
        if weights is None:
            return _unknown_model(body.model)
        prompt = _chat_prompt(body, state.engine.tokenizer)
        k = (body.top_logprobs or 0) if body.logprobs else 0
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        # Like vLLM's chat route: without a budget, the answer may use the context.
        budget = body.max_completion_tokens or body.max_tokens \
            or max(1, state.limits.max_context_length - len(prompt))
        job = GenerationJob(prompt, body.n, _spec(body, state, prompt, budget, k, None, field),
                            weights.adapter)
    except InvalidRequest as exc:
        return _error(400, "BadRequestError", str(exc), exc.param)
    try:
        (output,) = await _run_all(request, state, [job])
    except ClientGoneError:
        return Response(status_code=499)
    choices = [{
        "index": index,
        "message": {"role": "assistant", "content": sequence.text},
        "logprobs": _chat_logprobs(state, output, index, k) if body.logprobs else None,
        "finish_reason": sequence.finish_reason,
    } for index, sequence in enumerate(output.sequences)]
    return JSONResponse(
        {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
         "created": int(time.time()), "model": body.model, "choices": choices,
         "usage": _usage([prompt], [output])},
        headers={POLICY_VERSION_HEADER: str(weights.version)})
