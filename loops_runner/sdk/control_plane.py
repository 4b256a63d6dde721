"""Calls to the Loops control plane (spec 3): sessions, runs, samplers, statuses.

Control-plane calls are never retried (spec 2.4): one attempt, 300 s for
creates and 60 s otherwise; any error status raises ``RequestRejectedError``
with the server's message. Requests carry only ``Authorization``,
``User-Agent`` and ``X-Baseten-Accept-Error``. Request bodies are the wire
models the control plane validates (``loops_runner.wire``), dumped without
unset optional fields. Creates go under the team's root when a team is
named, and through the ``/debug/`` route when a scope other than
``default`` is asked for, as the Baseten SDK does.

One extension, off unless the creator asks for it: a ``reconnect`` hook
(the runner's local backend passes one) says where the control plane listens
now, starting it again if it died. Then a call that cannot reach the control
plane asks the hook and is sent again, with the retry module's backoff, for
at most ``reconnect_budget`` seconds (``ServerUnavailableError`` after that).
Only requests that surely never arrived are resent (a refused or timed-out
connect); a read (GET) is also resent when its answer was lost. A restarted
local control plane keeps its sessions and runs in SQLite and adopts the
trainers and samplers still running, so the session, the run and the
trainer's state carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from loops_runner.sdk.errors import LoopsError, ServerUnavailableError
from loops_runner.sdk.http import base_headers, make_client, raise_for_status
from loops_runner.sdk.retry import RESEND_ERRORS, RetryPolicy, send
from loops_runner.wire import (
    Checkpoint,
    CheckpointFilesResponse,
    CheckpointListResponse,
    CheckpointSourceResponse,
    CreateSamplerRequest,
    CreateSessionRequest,
    CreateTrainerRequest,
    RunInfo,
    RunResponse,
    SamplerInfo,
    SamplerResponse,
    SamplerStatusResponse,
    ServerCapabilities,
    SessionResponse,
    TrainerDeployment,
    TrainerDeploymentResponse,
    ValidateCheckpointRequest,
)
from loops_runner.wire.control_plane import RunListResponse, SamplerListResponse, TeamsResponse

CREATE_TIMEOUT = 300.0
READ_TIMEOUT = 60.0
DEFAULT_BASE_URL = "https://api.baseten.co"
# Long enough for a local control plane to start again on a busy machine
# (imports, SQLite, adopting its servers), short enough to give up on one
# that will not come back (the runner's own retry then takes over).
RECONNECT_BUDGET = 300.0

logger = logging.getLogger("loops_runner.sdk")

# ``reconnect()`` -> (base URL, API key) of the control plane as it is now.
Reconnect = Callable[[], tuple[str, str | None]]

# A create is resent only when it cannot have arrived: resending one whose
# answer was lost could create a second trainer.
_RESEND_CREATE = RetryPolicy("control-plane call", frozenset(),
                             transport_errors=(httpx.ConnectError, httpx.ConnectTimeout),
                             log_level=logging.WARNING)
_RESEND_READ = RetryPolicy("control-plane read", frozenset(), transport_errors=RESEND_ERRORS,
                           log_level=logging.WARNING)


def _dump(request: BaseModel) -> dict[str, Any]:
    """A request model as its JSON body; optional fields left unset are not sent."""
    return request.model_dump(mode="json", exclude_none=True)


_Created = TypeVar("_Created", RunInfo, SamplerInfo)


def _reachable(created: _Created, url_name: str, *, run_id: str | None,
               operation: str) -> _Created:
    """``created`` as the create call returns it, refused while it has no URL to call yet."""
    if created.base_url is None:
        raise LoopsError(f"{url_name} is not yet available", run_id=run_id,
                         operation=operation)
    return created


def _parse(model: type[BaseModel], response: httpx.Response, what: str) -> Any:
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise LoopsError(f"unexpected answer from {response.request.url}: {exc}",
                         operation=what) from exc


class ControlPlaneClient:
    """A thin, typed wrapper of the control plane's routes."""

    def __init__(self, base_url: str, api_key: str | None, team_id: str | None = None, *,
                 reconnect: Reconnect | None = None,
                 reconnect_budget: float = RECONNECT_BUDGET) -> None:
        # One tuple, replaced whole: a thread reading it mid-reconnect never
        # pairs the new URL with the old key.
        self._where: tuple[str, str | None] = (base_url.rstrip("/"), api_key)
        self.team_id = team_id
        self.reconnect = reconnect
        self.reconnect_budget = reconnect_budget

    @property
    def base_url(self) -> str:
        return self._where[0]

    @property
    def api_key(self) -> str | None:
        return self._where[1]

    @property
    def create_root(self) -> str:
        """Where creates go: the team's root when a team is named (spec 3)."""
        return "/v1/loops" if self.team_id is None else f"/v1/teams/{self.team_id}/loops"

    def _post_create(self, resource: str, request: CreateTrainerRequest | CreateSamplerRequest,
                     *, what: str, run_id: str | None = None) -> httpx.Response:
        # A request that names a scope goes through /debug/, as the Baseten SDK does.
        path = f"{self.create_root}/debug/{resource}" if request.scope is not None \
            else f"{self.create_root}/{resource}"
        return self._request("POST", path, json=_dump(request), what=what,
                             timeout=CREATE_TIMEOUT, run_id=run_id)

    def _send(self, method: str, path: str, *, what: str, timeout: float,
              json: Any = None, params: dict[str, Any] | None = None,
              run_id: str | None = None) -> httpx.Response:
        """One attempt (spec 2.4), or, with a reconnect hook, resent after reconnecting."""

        def attempt() -> httpx.Response:
            base_url, api_key = self._where
            url = path if path.startswith("http") else f"{base_url}{path}"
            with make_client(headers=base_headers(api_key), timeout=timeout) as client:
                return client.request(method, url, json=json, params=params)

        if self.reconnect is None:
            return attempt()
        attempts = 0

        def reconnecting_attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self._reconnect(what, run_id)
            return attempt()

        policy = _RESEND_READ if method == "GET" else _RESEND_CREATE
        context = {"operation": what, "run_id": run_id}
        return send(reconnecting_attempt, policy, self.reconnect_budget,
                    what=f"{what} to the control plane",
                    context={k: v for k, v in context.items() if v is not None}).response

    def _reconnect(self, what: str, run_id: str | None) -> None:
        assert self.reconnect is not None
        old = self.base_url
        try:
            url, api_key = self.reconnect()
        except Exception as exc:
            raise ServerUnavailableError(
                f"the control plane at {old} stopped answering and could not be reached or "
                f"started again ({type(exc).__name__}: {exc})", operation=what,
                run_id=run_id) from exc
        self._where = (url.rstrip("/"), api_key)
        if self.base_url != old:
            logger.warning("the control plane at %s stopped answering; reconnected to %s "
                           "(sessions and runs are kept) and resending %s", old,
                           self.base_url, what)

    def _request(self, method: str, path: str, *, what: str, timeout: float = READ_TIMEOUT,
                 json: Any = None, params: dict[str, Any] | None = None,
                 run_id: str | None = None) -> httpx.Response:
        response = self._send(method, path, what=what, timeout=timeout, json=json,
                              params=params, run_id=run_id)
        raise_for_status(response, operation=what, run_id=run_id)
        return response

    # -- sessions, runs, samplers ------------------------------------------------------

    def team_id_of(self, team_name: str) -> str:
        """The id of the team named ``team_name`` (matched here, by exact name)."""
        response = self._request("GET", "/v1/teams", what="resolve_team")
        teams = _parse(TeamsResponse, response, "resolve_team").teams
        for team in teams:
            if team.name == team_name:
                return team.id
        names = ", ".join(sorted(team.name for team in teams)) or "<none>"
        raise ValueError(f"team {team_name!r} does not exist on {self.base_url}; "
                         f"available teams: {names}")

    def create_session(self, training_project_id: str | None) -> str:
        # The official SDK sends no body at all; an older one sent the project.
        body = None if training_project_id is None else _dump(
            CreateSessionRequest(training_project_id=training_project_id))
        response = self._request("POST", f"{self.create_root}/sessions", json=body,
                                 what="create_session", timeout=CREATE_TIMEOUT)
        return _parse(SessionResponse, response, "create_session").session.id

    def create_trainer(self, request: CreateTrainerRequest) -> RunInfo:
        response = self._post_create("trainers", request, what="create_trainer")
        run = _parse(RunResponse, response, "create_trainer").run
        return _reachable(run, "the run's trainer URL", run_id=run.id,
                          operation="create_trainer")

    def create_sampler(self, request: CreateSamplerRequest) -> SamplerInfo:
        response = self._post_create("samplers", request, what="create_sampler",
                                     run_id=request.run_id)
        sampler = _parse(SamplerResponse, response, "create_sampler").sampler
        return _reachable(sampler, "the sampler's URL", run_id=request.run_id,
                          operation="create_sampler")

    def trainer_status(self, deployment_id: str) -> str:
        response = self._request("GET", f"/v1/loops/deployments/{deployment_id}",
                                 what="trainer_status", timeout=30.0)
        return _parse(TrainerDeploymentResponse, response,
                      "trainer_status").deployment.status.name

    def sampler_status(self, model_id: str, deployment_id: str) -> str:
        response = self._request("GET", f"/v1/models/{model_id}/deployments/{deployment_id}",
                                 what="sampler_status", timeout=30.0)
        return _parse(SamplerStatusResponse, response, "sampler_status").status

    # -- listing and stopping (Baseten documents these; SDK 0.32 does not call them) ------

    def list_runs(self, session_id: str | None = None) -> list[RunInfo]:
        params = {"session_id": session_id} if session_id else None
        response = self._request("GET", "/v1/loops/runs", params=params, what="list_runs")
        return _parse(RunListResponse, response, "list_runs").runs

    def get_run(self, run_id: str) -> RunInfo:
        response = self._request("GET", f"/v1/loops/runs/{run_id}", what="get_run",
                                 run_id=run_id)
        return _parse(RunResponse, response, "get_run").run

    def list_samplers(self, session_id: str | None = None) -> list[SamplerInfo]:
        params = {"session_id": session_id} if session_id else None
        response = self._request("GET", "/v1/loops/samplers", params=params,
                                 what="list_samplers")
        return _parse(SamplerListResponse, response, "list_samplers").samplers

    def deactivate_run(self, deployment_id: str, run_id: str | None) -> TrainerDeployment:
        """Stop a run's trainer deployment (``run_id``: only that run of a shared one)."""
        params = {"run_id": run_id} if run_id else None
        response = self._request("POST", f"/v1/loops/deployments/{deployment_id}/deactivate",
                                 params=params, what="deactivate_run", run_id=run_id)
        return _parse(TrainerDeploymentResponse, response, "deactivate_run").deployment

    def deactivate_sampler(self, model_id: str, deployment_id: str) -> None:
        """Stop a dedicated sampler's deployment (Baseten's model deployment route)."""
        self._request("POST", f"/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
                      what="deactivate_sampler")

    def capabilities(self) -> ServerCapabilities:
        response = self._request("GET", "/v1/loops/capabilities", what="get_server_capabilities")
        return _parse(ServerCapabilities, response, "get_server_capabilities")

    # -- checkpoints -------------------------------------------------------------------

    def list_checkpoints(self, run_id: str) -> list[Checkpoint]:
        response = self._request("GET", "/v1/loops/checkpoints", params={"run_id": run_id},
                                 what="list_checkpoints", run_id=run_id)
        return _parse(CheckpointListResponse, response, "list_checkpoints").checkpoints

    def checkpoint_by_path(self, path: str) -> Checkpoint:
        """The checkpoint a ``bt://`` path names; ValueError when there is none."""
        response = self._send("GET", "/v1/loops/checkpoints", what="resolve_checkpoint",
                              timeout=READ_TIMEOUT, params={"checkpoint_path": path})
        if response.status_code == 404:
            raise ValueError(f"no Loops checkpoint found for path {path!r}")
        raise_for_status(response, operation="resolve_checkpoint")
        checkpoints = _parse(CheckpointListResponse, response, "resolve_checkpoint").checkpoints
        if not checkpoints:
            raise ValueError(f"no Loops checkpoint found for path {path!r}")
        return checkpoints[0]

    def validate_checkpoint(self, path: str, run_id: str | None) -> None:
        self._request("POST", "/v1/loops/checkpoints/validate",
                      json=ValidateCheckpointRequest(checkpoint_path=path,
                                                     run_id=run_id).model_dump(mode="json"),
                      what="validate_checkpoint", run_id=run_id)

    def checkpoint_files(self, checkpoint_id: str, page_size: int,
                         page_token: int) -> CheckpointFilesResponse:
        response = self._request(
            "GET", f"/v1/loops/checkpoints/{checkpoint_id}/files",
            params={"page_size": page_size, "page_token": page_token},
            what="get_checkpoint_archive_url")
        return _parse(CheckpointFilesResponse, response, "get_checkpoint_archive_url")

    def checkpoint_source(self, checkpoint_id: str) -> CheckpointSourceResponse:
        response = self._request("GET", f"/v1/loops/checkpoints/{checkpoint_id}/source",
                                 what="download_checkpoint")
        return _parse(CheckpointSourceResponse, response, "download_checkpoint")
