"""HTTP routes of the trainer: read the request, hand it over, answer.

Operation submits go through the operation store (202 + long-poll); the
service parses and validates them. Nothing here touches tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from loops_runner.servers.common import Refusal, error_response, gateway_rejection
from loops_runner.servers.openapi import (
    add_catch_all,
    answers,
    header,
    install_openapi,
    json_body,
)
from loops_runner.servers.operation_store import idempotency_key, install_operation_routes
from loops_runner.servers.trainer.service import TrainerService
from loops_runner.wire.errors import ErrorBody
from loops_runner.wire.headers import IDEMPOTENCY_KEY_HEADER, RUN_ID_HEADER
from loops_runner.wire.operations import OperationAccepted
from loops_runner.wire.training import (
    ForwardBackwardRequest,
    InitTrainerServerRequest,
    LoadStateRequest,
    OptimStepRequest,
    PolicyVersionResponse,
    SaveStateRequest,
    SaveWeightsForSamplerRequest,
)

MAX_BODY_BYTES = 32 * 1024 * 1024  # spec 4.6: the SDK chunks at 24 MiB; accept up to 32 MiB
RUN_HEADER = RUN_ID_HEADER
# Each operation and the wire model of its body (parsed by the service, off the loop).
OPERATIONS = {
    "init_trainer_server": InitTrainerServerRequest,
    "forward": ForwardBackwardRequest,
    "forward_backward": ForwardBackwardRequest,
    "optim_step": OptimStepRequest,
    "save_state": SaveStateRequest,
    "save_weights_for_sampler": SaveWeightsForSamplerRequest,
    "load_state": LoadStateRequest,
    "load_state_with_optimizer": LoadStateRequest,
}
RUN_HEADER_DOC = header(RUN_HEADER, "the run this operation belongs to (or run_id in the body)")
ERRORS = {"4XX": ErrorBody, 503: ErrorBody}


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) anything over ``limit`` without buffering it all."""
    too_large = Refusal(
        413, f"request body exceeds {limit} bytes ({limit // (1024 * 1024)} MiB); split the "
        "data over several requests", "BODY_TOO_LARGE")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: TrainerService) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(title="loops-runner trainer", lifespan=lifespan)
    app.state.service = service
    install_openapi(app, ErrorBody)
    install_operation_routes(app, service.store, ERRORS)

    def add_submit_route(op: str, body_model: type) -> None:
        async def submit(request: Request) -> Response:
            try:
                body = await read_body(request)
            except Refusal as rejection:
                return rejection.response()
            header_run = request.headers.get(RUN_HEADER)

            async def prepare():  # type: ignore[no-untyped-def]
                return await service.prepare(op, body, header_run)

            return await service.store.submit(kind=op, body=body, key=idempotency_key(request),
                                              prepare=prepare)

        submit.__name__ = f"submit_{op}"
        app.post(f"/{op}", status_code=202,
                 openapi_extra=json_body(body_model) | {"parameters": [
                     RUN_HEADER_DOC, header(IDEMPOTENCY_KEY_HEADER, "replays return the same "
                                            "operation and never run it twice")]},
                 responses=answers({202: OperationAccepted, 409: ErrorBody, 413: ErrorBody,
                                    **ERRORS}))(submit)

    for op, body_model in OPERATIONS.items():
        add_submit_route(op, body_model)

    @app.get("/health", responses=answers(ERRORS))
    async def health(base_model: str | None = None) -> Response:
        if base_model and not service.serves(base_model):
            return gateway_rejection(
                404, f"model {base_model!r} is not served by this trainer (it serves "
                f"{service.requested_model!r})", "model_not_served")
        if service.store.shutting_down:
            return error_response(503, "trainer is shutting down", "SHUTTING_DOWN")
        if not service.ready:
            detail = "base model is loading" if service.load_error is None else (
                f"base model failed to load: {service.load_error}")
            return error_response(503, detail, "LOADING")
        return JSONResponse({"status": "ok", "base_model": service.base_model_id,
                             "runs": len(service.known_runs),
                             "resident_runs": len(service.engine.runs),
                             "operations": service.store.counts()})

    @app.get("/policy_version", openapi_extra={"parameters": [RUN_HEADER_DOC]},
             responses=answers({200: PolicyVersionResponse, **ERRORS}))
    async def policy_version(request: Request) -> Response:
        try:
            version = service.policy_version(request.headers.get(RUN_HEADER))
        except Refusal as rejection:
            return rejection.response()
        return JSONResponse(PolicyVersionResponse(policy_version=version).model_dump())

    # Diagnostics: read-only views of one run's tensors as safetensors, taken on
    # the engine thread after every operation of that run accepted before the call.
    debug_answers = answers(ERRORS) | {200: {
        "content": {"application/octet-stream": {}}, "description": "safetensors bytes"}}

    @app.get("/debug/runs/{run_id}/gradients", responses=debug_answers)
    async def debug_gradients(run_id: str) -> Response:
        return await _debug_tensors(service, run_id, "gradient_buffer")

    @app.get("/debug/runs/{run_id}/adapter", responses=debug_answers)
    async def debug_adapter(run_id: str) -> Response:
        return await _debug_tensors(service, run_id, "adapter_weights")

    # Anything else is a feature this trainer lacks: 501, never 404, which the
    # SDK would take for "still starting" and retry for an hour (spec 2.3); a
    # known path with the wrong method is 405, as HTTP says.
    add_catch_all(
        app,
        wrong_method=lambda message, headers: error_response(
            405, message, "METHOD_NOT_ALLOWED", headers=headers),
        unknown_path=lambda method, path: error_response(
            501, f"{method} /{path} is not implemented by this trainer", "NOT_IMPLEMENTED"))

    _ = (health, policy_version, debug_gradients, debug_adapter)
    return app


async def _debug_tensors(service: TrainerService, run_id: str, method: str) -> Response:
    from safetensors.torch import save as save_safetensors

    try:
        service.require_run(run_id)
    except Refusal as rejection:
        return rejection.response()
    await service.limits()

    def read() -> bytes:
        tensors, meta = getattr(service._engine(), method)(run_id)
        return save_safetensors(tensors, metadata=meta)

    data = await service.store.call(read, group=run_id)
    return Response(data, media_type="application/octet-stream")
