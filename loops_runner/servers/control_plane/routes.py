"""HTTP routes of the control plane (spec section 3): parse, validate, hand over.

Create routes exist twice, under ``/v1/loops`` and under the team-scoped
``/v1/teams/{team_id}/loops`` the SDK uses when a team is named. Bodies are
parsed here by hand so that every refusal has the spec's error shape
(``{"detail", "details": {"reason"}}``) and status 422, never the 400/404 a
client might take for "still starting".
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from loops_runner.servers.common import Refusal, error_response, format_validation_errors
from loops_runner.servers.control_plane.checkpoint_requests import MAX_FILE_PAGE_SIZE
from loops_runner.servers.control_plane.checks import LOCAL_TEAM, invalid
from loops_runner.servers.control_plane.files import FileTokenError, resolve_file
from loops_runner.servers.control_plane.service import ControlPlane
from loops_runner.servers.openapi import answers, json_body
from loops_runner.wire.checkpoints import (
    CheckpointFilesResponse,
    CheckpointListResponse,
    CheckpointSourceResponse,
    ValidateCheckpointRequest,
)
from loops_runner.wire.control_plane import (
    CreateSamplerRequest,
    CreateSessionRequest,
    CreateTrainerRequest,
    DeploymentListResponse,
    RunListResponse,
    RunResponse,
    SamplerListResponse,
    SamplerResponse,
    SamplerStatusResponse,
    ServerCapabilities,
    SessionResponse,
    TeamsResponse,
    TrainerDeploymentResponse,
)
from loops_runner.wire.errors import ErrorBody

Body = TypeVar("Body", bound=BaseModel)
LOOPS_ROOTS = ("/v1/loops", "/v1/teams/{team_id}/loops")
ERRORS: dict[int | str, Any] = {"4XX": ErrorBody, 503: ErrorBody}


def returns(model: Any) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering ``model`` (or one of our error bodies)."""
    return answers({200: model, **ERRORS})


def query(*names: str, integer: bool = False) -> dict[str, Any]:
    """``openapi_extra`` for optional query parameters a route reads by hand."""
    kind = {"type": "integer", "minimum": 0} if integer else {"type": "string"}
    return {"parameters": [{"name": name, "in": "query", "required": False, "schema": kind}
                           for name in names]}


async def parse_body(request: Request, model: type[Body], *, allow_empty: bool = False) -> Body:
    raw = await request.body()
    if not raw.strip():
        if allow_empty:
            return model()
        raise invalid("the request body must be a JSON object")
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}", "INVALID_JSON") from None
    if not isinstance(payload, dict):
        raise invalid("the request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise invalid(format_validation_errors(exc.errors()), "VALIDATION_ERROR") from None


def int_query(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid(f"query parameter {name} = {value!r} is not an integer") from None


def dump(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


def build_router(cp: ControlPlane) -> APIRouter:
    router = APIRouter()

    def team(request: Request) -> str | None:
        return request.path_params.get("team_id")

    @router.get("/health", responses=answers(ERRORS))
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/v1/teams", responses=returns(TeamsResponse))
    async def teams() -> JSONResponse:
        return dump(TeamsResponse(teams=[LOCAL_TEAM]))

    # -- creates (also team-scoped) ------------------------------------------------------

    async def create_session(request: Request) -> JSONResponse:
        body = await parse_body(request, CreateSessionRequest, allow_empty=True)
        return dump(SessionResponse(session=cp.provisioning.create_session(body, team(request))))

    async def create_trainer(request: Request) -> JSONResponse:
        body = await parse_body(request, CreateTrainerRequest)
        return dump(RunResponse(run=await cp.provisioning.create_run(body, team(request))))

    async def create_run_with_sampler(request: Request) -> JSONResponse:
        # The older documented name of trainer creation; it embeds the paired
        # sampler, created eagerly.
        body = await parse_body(request, CreateTrainerRequest)
        return dump(RunResponse(run=await cp.provisioning.create_run(body, team(request),
                                                                     with_sampler=True)))

    async def create_sampler(request: Request) -> JSONResponse:
        body = await parse_body(request, CreateSamplerRequest)
        sampler = await cp.provisioning.create_sampler(body, team(request))
        return dump(SamplerResponse(sampler=sampler))

    CreateHandler = Callable[[Request], Awaitable[JSONResponse]]
    creates: dict[str, tuple[CreateHandler, dict[str, Any], type[BaseModel]]] = {
        "/sessions": (create_session, json_body(CreateSessionRequest, required=False),
                      SessionResponse),
        "/trainers": (create_trainer, json_body(CreateTrainerRequest), RunResponse),
        "/debug/trainers": (create_trainer, json_body(CreateTrainerRequest), RunResponse),
        "/runs": (create_run_with_sampler, json_body(CreateTrainerRequest), RunResponse),
        "/samplers": (create_sampler, json_body(CreateSamplerRequest), SamplerResponse),
        "/debug/samplers": (create_sampler, json_body(CreateSamplerRequest), SamplerResponse),
    }
    for root in LOOPS_ROOTS:
        for suffix, (handler, body_doc, answer) in creates.items():
            router.add_api_route(root + suffix, handler, methods=["POST"],
                                 openapi_extra=body_doc, responses=returns(answer),
                                 operation_id=f"create{(root + suffix).replace('/', '_')}")

    # -- reads ---------------------------------------------------------------------------

    @router.get("/v1/loops/sessions/{session_id}", responses=answers(ERRORS))
    async def get_session(session_id: str) -> JSONResponse:
        return JSONResponse(cp.views.get_session(session_id))

    @router.get("/v1/loops/runs", responses=returns(RunListResponse),
                openapi_extra=query("run_id", "base_model", "session_id"))
    async def list_runs(request: Request) -> JSONResponse:
        query = request.query_params
        runs = cp.views.list_runs(query.get("run_id"), query.get("base_model"),
                                  query.get("session_id"))
        return dump(RunListResponse(runs=runs))

    @router.get("/v1/loops/runs/{run_id}", responses=returns(RunResponse))
    async def get_run(run_id: str) -> JSONResponse:
        return dump(RunResponse(run=cp.views.get_run(run_id)))

    @router.get("/v1/loops/samplers", responses=returns(SamplerListResponse),
                openapi_extra=query("session_id"))
    async def list_samplers(request: Request) -> JSONResponse:
        return dump(SamplerListResponse(
            samplers=cp.views.list_samplers(request.query_params.get("session_id"))))

    @router.get("/v1/loops/samplers/{sampler_id}", responses=returns(SamplerResponse))
    async def get_sampler(sampler_id: str) -> JSONResponse:
        return dump(SamplerResponse(sampler=cp.views.get_sampler(sampler_id)))

    @router.get("/v1/loops/deployments", responses=returns(DeploymentListResponse))
    async def list_deployments() -> JSONResponse:
        return dump(DeploymentListResponse(deployments=cp.views.list_deployments()))

    @router.get("/v1/loops/deployments/{deployment_id}",
                responses=returns(TrainerDeploymentResponse))
    async def get_deployment(deployment_id: str) -> JSONResponse:
        return dump(TrainerDeploymentResponse(deployment=cp.views.get_deployment(deployment_id)))

    @router.post("/v1/loops/deployments/{deployment_id}/deactivate",
                 responses=returns(TrainerDeploymentResponse),
                 openapi_extra={"parameters": [
                     *query("run_id")["parameters"],
                     {"name": "force", "in": "query", "required": False,
                      "schema": {"type": "boolean"}}]})
    async def deactivate(deployment_id: str, request: Request) -> JSONResponse:
        params = request.query_params
        force = params.get("force", "false").lower()
        if force not in {"true", "false", "1", "0"}:
            raise invalid(f"force must be true or false, got {params.get('force')!r}")
        deployment = await cp.provisioning.deactivate(
            deployment_id, run_id=params.get("run_id"), force=force in {"true", "1"})
        return dump(TrainerDeploymentResponse(deployment=deployment))

    @router.get("/v1/models/{model_id}/deployments/{deployment_id}",
                responses=returns(SamplerStatusResponse))
    async def sampler_status(model_id: str, deployment_id: str) -> JSONResponse:
        status = cp.views.sampler_model_status(model_id, deployment_id)
        return dump(SamplerStatusResponse(status=status))

    @router.post("/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
                 responses=returns(SamplerStatusResponse))
    async def deactivate_sampler(model_id: str, deployment_id: str) -> JSONResponse:
        status = await cp.provisioning.deactivate_sampler(model_id, deployment_id)
        return dump(SamplerStatusResponse(status=status))

    @router.get("/v1/loops/capabilities", responses=returns(ServerCapabilities))
    async def capabilities() -> JSONResponse:
        return dump(await cp.capabilities())

    # -- checkpoints -------------------------------------------------------------------

    @router.get("/v1/loops/checkpoints", responses=returns(CheckpointListResponse),
                openapi_extra=query("run_id", "checkpoint_path", "base_model"))
    async def list_checkpoints(request: Request) -> JSONResponse:
        query = request.query_params
        checkpoints = cp.checkpoints.list_checkpoints(
            query.get("run_id"), query.get("checkpoint_path"), query.get("base_model"))
        return dump(CheckpointListResponse(checkpoints=checkpoints))

    @router.post("/v1/loops/checkpoints/validate", responses=answers(ERRORS),
                 openapi_extra=json_body(ValidateCheckpointRequest))
    async def validate_checkpoint(request: Request) -> JSONResponse:
        cp.checkpoints.validate_checkpoint(await parse_body(request, ValidateCheckpointRequest))
        return JSONResponse({})

    @router.get("/v1/loops/checkpoints/{checkpoint_id}/files",
                responses=returns(CheckpointFilesResponse),
                openapi_extra=query("page_size", "page_token", integer=True))
    async def checkpoint_files(checkpoint_id: str, request: Request) -> JSONResponse:
        page_size = int_query(request, "page_size", MAX_FILE_PAGE_SIZE)
        page_token = int_query(request, "page_token", 0)
        base_url = str(request.base_url).rstrip("/")
        return dump(cp.checkpoints.checkpoint_files(checkpoint_id, page_size, page_token, base_url))

    @router.get("/v1/loops/checkpoints/{checkpoint_id}/source",
                responses=returns(CheckpointSourceResponse))
    async def checkpoint_source(checkpoint_id: str) -> JSONResponse:
        source = cp.checkpoints.checkpoint_source(checkpoint_id)
        return dump(CheckpointSourceResponse.model_validate(source))

    @router.get("/files/{token}", responses=answers(ERRORS) | {
        200: {"content": {"application/octet-stream": {}}, "description": "the file"}})
    async def signed_file(token: str) -> Response:
        try:
            ref = cp.signer.verify(token)
            path = resolve_file(cp.home, ref)
        except FileTokenError as exc:
            return error_response(403, f"file URL refused: {exc}", "FORBIDDEN")
        except FileNotFoundError:
            return error_response(404, "the file no longer exists (the checkpoint was deleted "
                                       "or overwritten)", "NOT_FOUND")
        return FileResponse(path, media_type="application/octet-stream",
                            filename=path.name)

    return router


def api_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return exc.response()


def request_validation_handler(_: Request, exc: Exception) -> Response:
    errors: list[dict[str, Any]] = list(getattr(exc, "errors", list)())
    return error_response(422, format_validation_errors(errors), "VALIDATION_ERROR")


def http_error_handler(request: Request, exc: Exception) -> Response:
    status = int(getattr(exc, "status_code", 500))
    if status == 404:
        return error_response(404, f"no route {request.method} {request.url.path} on this "
                                   "control plane", "NOT_FOUND")
    if status == 405:
        return error_response(405, f"method {request.method} is not allowed on "
                                   f"{request.url.path}", "METHOD_NOT_ALLOWED",
                              headers=getattr(exc, "headers", None))
    return error_response(status, str(getattr(exc, "detail", "error")), "HTTP_ERROR")
