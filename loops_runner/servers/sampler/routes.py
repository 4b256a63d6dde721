"""The sampler's Loops routes (spec 6): parse, validate, hand over to the engine.

``POST /sample`` answers 200 with a completion, 400 with a vLLM
``BadRequestError`` body for anything invalid (never retried by the SDK), and
408 only when the live adapter stays behind ``X-Min-Policy-Version``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from loops_runner.servers.common import (
    InvalidRequest,
    error_response,
    format_validation_errors,
    vllm_bad_request,
)
from loops_runner.servers.openapi import answers, header
from loops_runner.servers.openapi import json_body as json_body_doc
from loops_runner.servers.sampler.adapters import BadCheckpointError, BehindFloorError
from loops_runner.servers.sampler.engine import GenerationJob
from loops_runner.servers.sampler.lora import AdapterError
from loops_runner.servers.sampler.protocol import (
    completion_response,
    prompt_tokens,
    sample_spec,
)
from loops_runner.servers.sampler.state import (
    ClientGoneError,
    generate_while_connected,
    sampler_state,
)
from loops_runner.wire import headers as wire_headers
from loops_runner.wire.errors import ErrorBody, VllmErrorBody
from loops_runner.wire.sampling import (
    CompletionResponse,
    LiveUpdateRequest,
    LiveUpdateResponse,
    SampleRequest,
)
from loops_runner.wire.training import PolicyVersionResponse

logger = logging.getLogger("loops_runner.sampler.routes")
router = APIRouter()

POLICY_VERSION_HEADER = wire_headers.POLICY_VERSION_RESPONSE_HEADER
CHECKPOINT_HEADER = wire_headers.CHECKPOINT_PATH_HEADER
FLOOR_HEADER = wire_headers.MIN_POLICY_VERSION_HEADER
RUN_HEADER = wire_headers.RUN_ID_HEADER
RUN_HEADER_DOC = header(RUN_HEADER, "sample from this run's live adapter")


async def json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc


def parse_floor(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        floor = int(value)
    except ValueError:
        floor = -1
    if floor < 0:
        raise InvalidRequest(f"{FLOOR_HEADER} must be a non-negative integer, got {value!r}",
                             FLOOR_HEADER)
    return floor


def validation_failure(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors()
    location = [str(p) for p in errors[0].get("loc", ())] if errors else []
    return InvalidRequest(format_validation_errors(errors),
                          ".".join(location) if location else None)


_Body = TypeVar("_Body", bound=BaseModel)


async def parse_body(request: Request, model: type[_Body]) -> _Body:
    """The request's JSON object read as ``model``; anything else is an ``InvalidRequest``."""
    payload = await json_body(request)
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_failure(exc) from exc


@router.post("/sample", openapi_extra=json_body_doc(SampleRequest) | {"parameters": [
    RUN_HEADER_DOC,
    header(CHECKPOINT_HEADER, "sample from this published checkpoint (bt:// path)"),
    header(FLOOR_HEADER, "wait (then 408) until the live adapter is at least this version"),
]}, responses=answers({200: CompletionResponse, 400: VllmErrorBody, 408: ErrorBody})
    | {499: {"description": "the client went away before the answer"}})
async def sample(request: Request) -> Response:
    state = sampler_state(request)
    try:
        body = await parse_body(request, SampleRequest)
        prompt = prompt_tokens(body)
        spec = sample_spec(body, prompt, state.limits)
        floor = parse_floor(request.headers.get(FLOOR_HEADER))
        # ``lora`` is the serverless body's copy of the checkpoint header.
        checkpoint = request.headers.get(CHECKPOINT_HEADER) or body.lora
        weights = await state.store.select(run_id=request.headers.get(RUN_HEADER),
                                           checkpoint_path=checkpoint, min_version=floor)
    except InvalidRequest as exc:
        return vllm_bad_request(str(exc), exc.param)
    except BadCheckpointError as exc:
        return vllm_bad_request(str(exc), CHECKPOINT_HEADER)
    except BehindFloorError as exc:
        return error_response(408, str(exc), reason="BEHIND_POLICY_FLOOR")

    job = GenerationJob(prompt=prompt, n=body.n, spec=spec, adapter=weights.adapter)
    try:
        output = await generate_while_connected(request, state.engine, job)
    except ClientGoneError:
        return Response(status_code=499)
    response = completion_response(output, prompt, model=weights.model,
                                   tokens_as_ids=body.return_tokens_as_token_ids,
                                   text=state.token_text)
    return JSONResponse(response.model_dump(mode="json", exclude_none=True),
                        headers={POLICY_VERSION_HEADER: str(weights.version)})


@router.get("/trainers_policy_version", openapi_extra={"parameters": [RUN_HEADER_DOC]},
            responses=answers({200: PolicyVersionResponse, 400: VllmErrorBody}))
async def trainers_policy_version(request: Request) -> Response:
    state = sampler_state(request)
    try:
        live = await state.store.live_version(request.headers.get(RUN_HEADER))
    except BadCheckpointError as exc:
        return vllm_bad_request(str(exc), RUN_HEADER)
    return JSONResponse({"policy_version": live})


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    state = sampler_state(request)
    await state.store.live_version(None)  # pick up a fresh publish of the default run
    data = [state.model_card(entry.id, entry.parent) for entry in state.store.model_entries()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/health")
async def health(request: Request) -> Response:
    state = sampler_state(request)
    return JSONResponse({
        "status": "ok",
        "base_model": state.store.base_model_id,
        "default_run": state.store.default_run,
        "paired_run": state.settings.run_id,
        "stream_interval_s": state.settings.stream_interval_s,
        "stream_events_per_s": state.settings.stream_events_per_s,
        "engine": {**state.engine.stats(), "device": state.engine.info.device,
                   "dtype": state.engine.info.dtype},
    })


@router.post("/wake")
async def wake() -> Response:
    # A local sampler is never scaled to zero; waking is a no-op.
    return JSONResponse({"status": "awake"})


@router.post("/internal/live", openapi_extra=json_body_doc(LiveUpdateRequest),
             responses=answers({200: LiveUpdateResponse, 422: ErrorBody}))
async def internal_live(request: Request) -> Response:
    """Weight sync: load the published adapter, swap it in, then answer."""
    state = sampler_state(request)
    try:
        update = LiveUpdateRequest.model_validate(await json_body(request))
    except InvalidRequest as exc:
        return error_response(422, str(exc), reason="INVALID_BODY")
    except ValidationError as exc:
        return error_response(422, format_validation_errors(exc.errors()), reason="INVALID_BODY")
    try:
        live = await state.store.publish(update.run_id, update.version, update.name)
    except FileNotFoundError as exc:
        return error_response(422, str(exc), reason="UNKNOWN_CHECKPOINT")
    except AdapterError as exc:
        return error_response(422, f"cannot load {update.name!r}: {exc}",
                              reason="ADAPTER_LOAD_FAILED")
    return JSONResponse(LiveUpdateResponse(run_id=update.run_id, live=live).model_dump())
