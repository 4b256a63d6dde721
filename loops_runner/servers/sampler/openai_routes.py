"""OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models/{id}``.

So everyday tools (the ``openai`` client, eval harnesses, chat UIs) can talk
to the base model or a trained adapter with their default settings. ``model``
is an id from ``GET /v1/models``: the base model, ``default`` (the live adapter
of the default run, or of ``X-Run-Id``), a served checkpoint's readable name,
or a ``bt://loops:<run>/sampler_weights/<name>`` checkpoint path. Chat prompts
use the tokenizer's chat template. ``stream=true`` answers with server-sent
events (``openai_stream``). Limits and refusals: ``openai_schemas``.

Every error is OpenAI's shape (``openai_schemas.openai_error``); these routes
are not the Loops SDK's, so they may answer an unknown model with OpenAI's 404.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loops_runner.servers.common import InvalidRequest
from loops_runner.servers.openapi import answers
from loops_runner.servers.openapi import json_body as json_body_doc
from loops_runner.servers.sampler.adapters import BadCheckpointError, ServedWeights
from loops_runner.servers.sampler.engine import (
    GenerationJob,
    GenerationOutput,
    SamplingSpec,
    SequenceOutput,
    TokenEvent,
)
from loops_runner.servers.sampler.openai_schemas import (
    ChatCompletionsRequest,
    ChatMessage,
    CompletionsRequest,
    OpenAIRequest,
    check_chat,
    check_common,
    check_completions,
    openai_error,
)
from loops_runner.servers.sampler.openai_stream import (
    EventStreamResponse,
    StreamPlan,
    sse_events,
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
    parse_body,
)
from loops_runner.servers.sampler.state import (
    ClientGoneError,
    SamplerState,
    generate_while_connected,
    sampler_state,
)
from loops_runner.wire.errors import OpenAIErrorBody

router = APIRouter()

_Body = TypeVar("_Body", bound=OpenAIRequest)

OPENAI_ERRORS = answers({"4XX": OpenAIErrorBody}) | {
    499: {"description": "the client went away before the answer"}}


def _spec(body: OpenAIRequest, state: SamplerState, prompt: list[int], max_tokens: int | None,
          logprobs: int, prompt_logprobs: int | None, bias: tuple[tuple[int, float], ...],
          field: str = "max_tokens") -> SamplingSpec:
    limits = state.limits
    if not prompt:
        raise InvalidRequest("prompt must not be empty", "prompt")
    check_token_ids(prompt, "prompt", limits.vocab_size)
    stop_ids = list(body.stop_token_ids or [])
    check_token_ids(stop_ids, "stop_token_ids", limits.vocab_size)
    return SamplingSpec(
        max_tokens=resolve_max_tokens(max_tokens, len(prompt), limits, field),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=top_k_setting(body.top_k, limits.vocab_size),
        seed=body.seed,
        stop=tuple(body.stop_strings()),
        stop_token_ids=tuple(stop_ids),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        regex=constraint_pattern(body.structured_outputs),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        logit_bias=bias,
    )


def _check_n(samples: int, state: SamplerState) -> None:
    if samples > state.limits.max_n:
        raise InvalidRequest(f"n = {samples} samples per prompt exceeds this sampler's limit "
                             f"of {state.limits.max_n} (its batch rows)", "n")


async def _weights(state: SamplerState, request: Request, model: str) -> ServedWeights | None:
    try:
        return await state.store.for_model(model, request.headers.get(RUN_HEADER))
    except BadCheckpointError as exc:
        raise InvalidRequest(str(exc), RUN_HEADER) from exc


def unknown_model(model: str) -> JSONResponse:
    return openai_error(404, f"The model `{model}` does not exist (GET /v1/models lists the "
                             "models this sampler serves).", "model", "model_not_found")


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


async def _admit(request: Request,
                 model: type[_Body]) -> tuple[SamplerState, _Body, tuple[tuple[int, float], ...]]:
    """What both endpoints check first: the sampler, the parsed body and its logit_bias as ids."""
    state = sampler_state(request)
    body = await parse_body(request, model)
    return state, body, check_common(body, state.limits.vocab_size)


def _stream_plan(id_prefix: str, body: OpenAIRequest, state: SamplerState) -> StreamPlan:
    return StreamPlan(f"{id_prefix}-{uuid.uuid4().hex}", body.model, body.n,
                      tuple(body.stop_strings()), body.include_usage, state.engine.tokenizer)


def _best(output: GenerationOutput, n: int) -> GenerationOutput:
    """OpenAI's ``best_of``: the ``n`` samples with the highest mean token logprob."""
    def score(sequence: SequenceOutput) -> float:
        return sum(sequence.logprobs) / max(1, len(sequence.logprobs))

    ranked = sorted(output.sequences, key=score, reverse=True)[:n]
    return GenerationOutput(ranked, output.prompt_logprobs)


def _event_stream(state: SamplerState, jobs: list[GenerationJob], plan: StreamPlan,
                  form: Any, weights: ServedWeights) -> EventStreamResponse:
    assert state.mailbox is not None  # set at start-up
    return EventStreamResponse(
        sse_events(state.engine, jobs, plan, form, state.mailbox),
        headers={POLICY_VERSION_HEADER: str(weights.version), "Cache-Control": "no-cache",
                 "X-Accel-Buffering": "no"})


# -- /v1/completions ---------------------------------------------------------------


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


class _CompletionChunks:
    """``text_completion`` chunks: text (the prompt first with echo) and legacy logprobs."""

    object_name = "text_completion"

    def __init__(self, state: SamplerState, body: CompletionsRequest,
                 prompts: list[list[int]]) -> None:
        self.text = state.token_text
        self.k = body.logprobs
        self.n = body.n
        self.echoed = [state.engine.tokenizer.decode(p, skip_special_tokens=False)
                       if body.echo else "" for p in prompts]
        self.offsets = [len(echoed) for echoed in self.echoed for _ in range(body.n)]

    def _entry(self, index: int, text: str, logprobs: Any, reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason,
                "stop_reason": None}

    def opening(self, index: int) -> dict[str, Any] | None:
        echoed = self.echoed[index // self.n]
        return self._entry(index, echoed, None, None) if echoed else None

    def entry(self, index: int, text: str, tokens: list[TokenEvent],
              reason: str | None) -> dict[str, Any]:
        logprobs = None
        if self.k is not None and tokens:
            pieces = [self.text(event.token_id) for event in tokens]
            offsets = []
            for piece in pieces:
                offsets.append(self.offsets[index])
                self.offsets[index] += len(piece)
            logprobs = {
                "tokens": pieces, "token_logprobs": [event.logprob for event in tokens],
                "top_logprobs": [{self.text(t): lp for t, lp in (event.top or ())[: self.k]}
                                 | {self.text(event.token_id): event.logprob}
                                 for event in tokens],
                "text_offset": offsets}
        return self._entry(index, text, logprobs, reason)


@router.post("/v1/completions", openapi_extra=json_body_doc(CompletionsRequest),
             responses=OPENAI_ERRORS)
async def completions(request: Request) -> Response:
    try:
        state, body, bias = await _admit(request, CompletionsRequest)
        samples = check_completions(body)
        _check_n(samples, state)
        if body.stream and body.echo and body.logprobs is not None:
            raise InvalidRequest("echo with logprobs cannot be streamed (the prompt's "
                                 "logprobs are known only at the end); send stream=false",
                                 "echo")
        weights = await _weights(state, request, body.model)
        if weights is None:
            return unknown_model(body.model)
        prompts = _prompts(body.prompt, state.engine.tokenizer)
        k = body.logprobs or 0
        # max_tokens=0 with echo only scores the prompt (eval harnesses do this).
        score_only = body.max_tokens == 0
        max_tokens = 1 if score_only else body.max_tokens
        wants_prompt = body.echo and body.logprobs is not None
        jobs = [GenerationJob(prompt, samples,
                              _spec(body, state, prompt, max_tokens, k,
                                    k if wants_prompt else None, bias),
                              weights.adapter)
                for prompt in prompts]
    except InvalidRequest as exc:
        return openai_error(400, str(exc), exc.param)
    if body.stream:
        plan = _stream_plan("cmpl", body, state)
        return _event_stream(state, jobs, plan, _CompletionChunks(state, body, prompts), weights)
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
        shown = _best(output, body.n) if samples > body.n else output
        prompt_text = tokenizer.decode(prompt, skip_special_tokens=False) if body.echo else ""
        for index, sequence in enumerate(shown.sequences):
            choices.append({
                "index": prompt_index * body.n + index,
                "text": prompt_text + sequence.text,
                "logprobs": (_completion_logprobs(state, prompt, shown, index, body.echo, k)
                             if body.logprobs is not None else None),
                "finish_reason": sequence.finish_reason,
                "stop_reason": None,
            })
    return JSONResponse(
        {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
         "created": int(time.time()), "model": body.model, "choices": choices,
         "usage": _usage(prompts, outputs)},
        headers={POLICY_VERSION_HEADER: str(weights.version)})


# -- /v1/chat/completions ----------------------------------------------------------


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


def _chat_token(state: SamplerState, token: int, value: float,
                top: Any, k: int) -> dict[str, Any]:
    text = state.token_text
    piece = text(token)
    return {"token": piece, "logprob": value, "bytes": list(piece.encode()),
            "top_logprobs": [{"token": text(t), "logprob": lp, "bytes": list(text(t).encode())}
                             for t, lp in (top or ())[:k]]}


def _chat_logprobs(state: SamplerState, sequence: SequenceOutput, k: int) -> dict[str, Any]:
    alternatives = sequence.top_logprobs or [[]] * len(sequence.token_ids)
    return {"content": [_chat_token(state, token, value, top, k) for token, value, top in
                        zip(sequence.token_ids, sequence.logprobs, alternatives, strict=True)]}


class _ChatChunks:
    """``chat.completion.chunk`` chunks: the role first, then content deltas."""

    object_name = "chat.completion.chunk"

    def __init__(self, state: SamplerState, logprobs: bool, k: int) -> None:
        self.state = state
        self.logprobs = logprobs
        self.k = k

    def opening(self, index: int) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}

    def entry(self, index: int, text: str, tokens: list[TokenEvent],
              reason: str | None) -> dict[str, Any]:
        logprobs = None
        if self.logprobs and tokens:
            logprobs = {"content": [_chat_token(self.state, e.token_id, e.logprob, e.top, self.k)
                                    for e in tokens]}
        delta = {"content": text} if text or reason is None else {}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


@router.post("/v1/chat/completions", openapi_extra=json_body_doc(ChatCompletionsRequest),
             responses=OPENAI_ERRORS)
async def chat_completions(request: Request) -> Response:
    try:
        state, body, bias = await _admit(request, ChatCompletionsRequest)
        check_chat(body)
        _check_n(body.n, state)
        weights = await _weights(state, request, body.model)
        if weights is None:
            return unknown_model(body.model)
        prompt = _chat_prompt(body, state.engine.tokenizer)
        k = (body.top_logprobs or 0) if body.logprobs else 0
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        # OpenAI's chat default: without a budget the answer may use the rest of the context.
        budget = body.max_completion_tokens or body.max_tokens \
            or max(1, state.limits.max_context_length - len(prompt))
        job = GenerationJob(prompt, body.n,
                            _spec(body, state, prompt, budget, k, None, bias, field),
                            weights.adapter)
    except InvalidRequest as exc:
        return openai_error(400, str(exc), exc.param)
    if body.stream:
        plan = _stream_plan("chatcmpl", body, state)
        return _event_stream(state, [job], plan, _ChatChunks(state, bool(body.logprobs), k),
                             weights)
    try:
        (output,) = await _run_all(request, state, [job])
    except ClientGoneError:
        return Response(status_code=499)
    choices = [{
        "index": index,
        "message": {"role": "assistant", "content": sequence.text},
        "logprobs": _chat_logprobs(state, sequence, k) if body.logprobs else None,
        "finish_reason": sequence.finish_reason,
    } for index, sequence in enumerate(output.sequences)]
    return JSONResponse(
        {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
         "created": int(time.time()), "model": body.model, "choices": choices,
         "usage": _usage([prompt], [output])},
        headers={POLICY_VERSION_HEADER: str(weights.version)})


# -- /v1/models/{id} ---------------------------------------------------------------


@router.get("/v1/models/{model_id:path}", responses=answers({404: OpenAIErrorBody}))
async def retrieve_model(model_id: str, request: Request) -> Response:
    """One entry of ``GET /v1/models`` (``openai``'s ``models.retrieve``)."""
    state = sampler_state(request)
    await state.store.live_version(None)  # pick up a fresh publish of the default run
    for entry in state.store.model_entries():
        if model_id in (entry.id, *entry.aliases):
            return JSONResponse(state.model_card(entry.id, entry.parent))
    return unknown_model(model_id)
