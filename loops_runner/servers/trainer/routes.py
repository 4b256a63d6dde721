"""HTTP routes of the trainer: read the request, hand it over, answer.

Operation submits go through the operation store (202 + long-poll); the
service parses and validates them. Nothing here touches tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from loops_runner.servers.common import error_response, gateway_rejection
from loops_runner.servers.operations import (
    OperationRejected,
    idempotency_key,
    install_operation_routes,
)
from loops_runner.servers.trainer.service import TrainerService
from loops_runner.wire.headers import RUN_ID_HEADER
from loops_runner.wire.training import PolicyVersionResponse

MAX_BODY_BYTES = 32 * 1024 * 1024  # spec 4.6: the SDK chunks at 24 MiB; accept up to 32 MiB
RUN_HEADER = RUN_ID_HEADER
OPERATIONS = (
    "init_trainer_server",
    "forward",
    "forward_backward",
    "optim_step",
    "save_state",
    "save_weights_for_sampler",
    "load_state",
    "load_state_with_optimizer",
)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) anything over ``limit`` without buffering it all."""
    too_large = OperationRejected(
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
    install_operation_routes(app, service.store)

    def add_submit_route(op: str) -> None:
        async def submit(request: Request) -> Response:
            try:
                body = await read_body(request)
            except OperationRejected as rejection:
                return rejection.response()
            header_run = request.headers.get(RUN_HEADER)

            async def prepare():  # type: ignore[no-untyped-def]
                return await service.prepare(op, body, header_run)

            return await service.store.submit(kind=op, body=body, key=idempotency_key(request),
                                              prepare=prepare)

        submit.__name__ = f"submit_{op}"
        app.post(f"/{op}", status_code=202)(submit)

    for op in OPERATIONS:
        add_submit_route(op)

    @app.get("/health")
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
                             "runs": len(service.known_runs)})

    @app.get("/policy_version")
    async def policy_version(request: Request) -> Response:
        try:
            version = service.policy_version(request.headers.get(RUN_HEADER))
        except OperationRejected as rejection:
            return rejection.response()
        return JSONResponse(PolicyVersionResponse(policy_version=version).model_dump())

    # Diagnostics: read-only views of one run's tensors as safetensors, taken on
    # the engine thread after every operation accepted before the call.
    @app.get("/debug/runs/{run_id}/gradients")
    async def debug_gradients(run_id: str) -> Response:
        return await _debug_tensors(service, run_id, "gradient_buffer")

    @app.get("/debug/runs/{run_id}/adapter")
    async def debug_adapter(run_id: str) -> Response:
        return await _debug_tensors(service, run_id, "adapter_weights")

    # Anything else is a feature this trainer lacks: 501, never 404, which the
    # SDK would take for "still starting" and retry for an hour (spec 2.3).
    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                   include_in_schema=False)
    async def not_implemented(path: str, request: Request) -> Response:
        return error_response(501, f"{request.method} /{path} is not implemented by this "
                              "trainer", "NOT_IMPLEMENTED")

    _ = (health, policy_version, debug_gradients, debug_adapter, not_implemented)
    return app


async def _debug_tensors(service: TrainerService, run_id: str, method: str) -> Response:
    from safetensors.torch import save as save_safetensors

    try:
        service.require_run(run_id)
    except OperationRejected as rejection:
        return rejection.response()
    await service.limits()

    def read() -> bytes:
        tensors, meta = getattr(service._engine(), method)(run_id)
        return save_safetensors(tensors, metadata=meta)

    data = await service.store.call(read)
    return Response(data, media_type="application/octet-stream")
