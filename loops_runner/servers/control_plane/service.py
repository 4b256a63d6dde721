"""What the control plane does: sessions, runs, samplers, deployments, checkpoints.

Routes parse and hand over to ``ControlPlane``; it validates against the
stored state, asks the supervisor for processes and the registry for
checkpoints, and answers with wire models. Every refusal is an ``ApiError``
(422 for bad input, 404 for unknown ids on read routes, 503 when a server
could not be started) so clients never retry a permanent error.

Presentation (spec 1.1): runs and samplers are *dedicated* deployments. One
trainer process hosts many runs (one adapter slot each, created by the
client's ``init_trainer_server``); one paired sampler process per trainer
deployment follows all of its runs (live adapter per ``X-Run-Id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from loops_runner.models.registry import (
    REGISTRY,
    ResolvedModel,
    canonical_model_id,
    max_context_length,
    resolve_model,
)
from loops_runner.servers.control_plane import deployment_states as states
from loops_runner.servers.control_plane.checkpoint_registry import CheckpointRegistry, list_files
from loops_runner.servers.control_plane.deployment_states import (
    DEPLOYING,
    LIVE_STATUSES,
    PAIRED,
    READY_STATUSES,
    RUNNING,
    SAMPLER,
    STANDALONE,
    STOPPED,
    TRAINER,
)
from loops_runner.servers.control_plane.files import (
    FileRef,
    FileSigner,
    load_or_create_secret,
)
from loops_runner.servers.control_plane.store import Store, new_id, now_iso, parse_iso
from loops_runner.servers.control_plane.supervisor import Supervisor
from loops_runner.servers.control_plane.tables import (
    CheckpointRow,
    DeploymentRow,
    RunRow,
    SamplerRow,
    SessionRow,
)
from loops_runner.storage.layout import resolve_checkpoint_path
from loops_runner.storage.weight_sync import register_paired_sampler
from loops_runner.wire.checkpoints import (
    Checkpoint,
    CheckpointFile,
    CheckpointFilesResponse,
    ValidateCheckpointRequest,
)
from loops_runner.wire.control_plane import (
    CreateSamplerRequest,
    CreateSessionRequest,
    CreateTrainerRequest,
    DeploymentStatus,
    RunInfo,
    SamplerInfo,
    ServerCapabilities,
    SessionInfo,
    SupportedModel,
    Team,
    TrainerDeployment,
)
from loops_runner.wire.paths import CHECKPOINT_KINDS, parse_bt_path

logger = logging.getLogger(__name__)

LOCAL_TEAM = Team(id="team-local", name="local")
LOCAL_SCOPES = frozenset({None, "default", "deployment"})
MAX_FILE_PAGE_SIZE = 1000


class ApiError(Exception):
    def __init__(self, status: int, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.reason = reason


def invalid(detail: str, reason: str = "INVALID_REQUEST") -> ApiError:
    return ApiError(422, detail, reason)


def not_found(detail: str) -> ApiError:
    return ApiError(404, detail, "NOT_FOUND")


@dataclass(frozen=True)
class Settings:
    home: Path
    api_key: str | None = None
    idle_timeout: float = 1800.0
    # How long a create call waits for the new server's health before it
    # answers anyway (the SDK's create timeout is 300 s; it then keeps polling).
    create_wait: float = 240.0
    deploy_timeout: float = 1800.0
    url_ttl_seconds: int = 3600
    poll_interval: float = 1.0


def launch_name(resolved: ResolvedModel, home: Path) -> str:
    """What a child gets as ``--base-model``: the registry name when there is one.

    The built-in model's directory maps back to its name, so a run resumed from
    a checkpoint (whose manifest names the directory) shares the trainer of
    runs created with ``tiny``.
    """
    if resolved.registry_name is not None:
        return resolved.registry_name
    for name, entry in REGISTRY.items():
        if entry.source == "builtin" and canonical_model_id(name, home) == resolved.load_path:
            return name
    return resolved.load_path


class ControlPlane:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.store = Store(self.home)
        self.supervisor = Supervisor(
            self.store, self.home, idle_timeout=settings.idle_timeout,
            deploy_timeout=settings.deploy_timeout, poll_interval=settings.poll_interval,
        )
        self.registry = CheckpointRegistry(self.store, self.home)
        self.signer = FileSigner(load_or_create_secret(self.home), settings.url_ttl_seconds)
        self._device_classes: list[str] | None = None
        self._expiry_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.supervisor.start()
        await asyncio.to_thread(self.registry.sync)
        self._expiry_task = asyncio.create_task(self._expire_periodically())

    async def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        await self.supervisor.close()
        self.store.close()

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(30.0)
            try:
                await asyncio.to_thread(self.registry.expire)
            except Exception:
                logger.exception("checkpoint expiry failed")

    # -- shared checks -------------------------------------------------------------

    def check_team(self, team_id: str | None) -> None:
        if team_id is not None and team_id != LOCAL_TEAM.id:
            raise invalid(f"team_id {team_id!r} is unknown: this control plane has one team, "
                          f"{LOCAL_TEAM.id!r} (GET /v1/teams)", "UNKNOWN_TEAM")

    @staticmethod
    def check_scope(scope: str | None) -> None:
        # Every local trainer and sampler is a deployment of its own on this
        # machine; a pool it cannot reach is refused rather than ignored.
        if scope not in LOCAL_SCOPES:
            raise ApiError(501, f"scope {scope!r} cannot be honoured by the local control "
                                "plane: it runs every trainer and sampler as its own "
                                "deployment on this machine (use 'default' or 'deployment')",
                           "NOT_SUPPORTED")

    def _session(self, session_id: str | None, field: str = "session_id") -> SessionRow:
        if not session_id:
            raise invalid(f"{field} is required (create one with POST /v1/loops/sessions)")
        row = self.store.get_session(session_id)
        if row is None:
            raise invalid(f"{field} {session_id!r} names no session of this control plane",
                          "UNKNOWN_SESSION")
        return row

    async def _resolve(self, name: str, field: str) -> ResolvedModel:
        try:
            # Builds the built-in model on first use, which takes a moment.
            return await asyncio.to_thread(resolve_model, name, self.home)
        except (ValueError, OSError) as exc:
            raise invalid(f"{field}: {exc}", "INVALID_BASE_MODEL") from None

    @staticmethod
    def _check_length(resolved: ResolvedModel, value: int | None, field: str) -> None:
        limit = max_context_length(resolved)
        if value is not None and limit is not None and value > limit:
            raise invalid(f"{field} = {value} exceeds the maximum context length {limit} of "
                          f"{resolved.requested!r}", "MAX_SEQ_LEN_TOO_LARGE")

    def _checkpoint_for_path(self, path: str, field: str) -> CheckpointRow | None:
        """Check a checkpoint path names an existing checkpoint; its registry row if any."""
        if path.startswith("bt://"):
            try:
                parsed = parse_bt_path(path)
            except ValueError as exc:
                raise invalid(f"{field}: {exc}", "INVALID_CHECKPOINT_PATH") from None
            if parsed.kind not in CHECKPOINT_KINDS:
                raise invalid(f"{field} {path!r} does not name a weights or sampler_weights "
                              "checkpoint", "INVALID_CHECKPOINT_PATH")
            row = self.registry.by_path(parsed.run_id, parsed.kind, parsed.name)
            if row is None:
                raise invalid(f"{field} {path!r}: no such checkpoint", "CHECKPOINT_NOT_FOUND")
            return row
        try:
            resolve_checkpoint_path(self.home, path)
        except (ValueError, FileNotFoundError) as exc:
            raise invalid(f"{field}: {exc}", "CHECKPOINT_NOT_FOUND") from None
        return None

    def _same_model(self, a: str, b: str) -> bool:
        try:
            return canonical_model_id(a, self.home) == canonical_model_id(b, self.home)
        except ValueError:
            return a == b

    def _deployment(self, deployment_id: str) -> DeploymentRow:
        row = self.store.get_deployment(deployment_id)
        if row is None:
            raise not_found(f"deployment {deployment_id!r} does not exist")
        return row

    def _deployment_failure(self, row: DeploymentRow) -> ApiError:
        return ApiError(503, f"{row.kind} deployment {row.id} is {row.status}: {row.reason}",
                        "DEPLOYMENT_FAILED")

    # -- sessions --------------------------------------------------------------------

    def create_session(self, body: CreateSessionRequest, team_id: str | None) -> SessionInfo:
        self.check_team(team_id)
        row = self.store.create_session(body.training_project_id, team_id)
        return self.session_info(row)

    def session_info(self, row: SessionRow) -> SessionInfo:
        return SessionInfo(id=row.id, training_project_id=row.training_project_id,
                           created_at=parse_iso(row.created_at))

    def get_session(self, session_id: str) -> dict[str, object]:
        row = self.store.get_session(session_id)
        if row is None:
            raise not_found(f"session {session_id!r} does not exist")
        runs = self.store.list_runs(session_id=session_id)
        samplers = self.store.list_samplers(session_id=session_id)
        return {"session": {**self.session_info(row).model_dump(mode="json"),
                            "run_ids": [run.id for run in runs],
                            "sampler_ids": [sampler.id for sampler in samplers]}}

    # -- runs (trainers) -----------------------------------------------------------------

    async def create_run(self, body: CreateTrainerRequest, team_id: str | None, *,
                         with_sampler: bool = False) -> RunInfo:
        self.check_team(team_id)
        self.check_scope(body.scope)
        session = self._session(body.session_id)
        if body.reuse_from_run_id and body.reuse_from_session_id:
            raise invalid("pass at most one of reuse_from_run_id and reuse_from_session_id")
        if body.base_checkpoint is not None:
            raise ApiError(501, "base_checkpoint is not supported by the local control plane: "
                                "pass the merged model as base_model (a local directory or "
                                "Hugging Face id) instead", "NOT_SUPPORTED")
        resolved = await self._resolve(body.base_model, "base_model")
        self._check_length(resolved, body.max_seq_len, "max_seq_len")
        if body.path is not None:
            checkpoint = self._checkpoint_for_path(body.path, "path")
            if checkpoint is not None:
                if checkpoint.base_model and not self._same_model(checkpoint.base_model,
                                                                 resolved.load_path):
                    raise invalid(f"path {body.path!r} was trained on "
                                  f"{checkpoint.base_model!r}, not on {body.base_model!r}",
                                  "BASE_MODEL_MISMATCH")
                if checkpoint.lora_rank != body.lora_rank:
                    raise invalid(f"path {body.path!r} has LoRA rank {checkpoint.lora_rank}, "
                                  f"but lora_rank = {body.lora_rank}", "RANK_MISMATCH")
        reuse_source = (f"run:{body.reuse_from_run_id}" if body.reuse_from_run_id else
                        f"session:{body.reuse_from_session_id}"
                        if body.reuse_from_session_id else None)
        if body.replicas > 1:  # fresh capacity, as the SDK documents
            reuse_source = None
        # Calls reusing the same source take turns, so that when its trainer is
        # gone the first provisions a new one and the others attach to it.
        serial = (self.supervisor.lock(f"reuse:{reuse_source}") if reuse_source
                  else contextlib.nullcontext())
        async with serial:
            deployment: DeploymentRow | None = None
            for candidate in self._reuse_candidates(body, resolved, reuse_source):
                if await self.supervisor.ensure_usable(candidate, self.settings.create_wait):
                    deployment = self.store.get_deployment(candidate)
                    break
            reused = deployment is not None
            if deployment is None:
                deployment = await self.supervisor.provision(
                    kind=TRAINER, role=TRAINER, base_model=resolved.load_path,
                    launch_model=launch_name(resolved, self.home), session_id=session.id)
            assert deployment is not None
            run = self._insert_run(body, session, resolved, deployment, reused, reuse_source)
        with self.supervisor.hold(deployment.id):
            return await self._finish_run(run, session, deployment, with_sampler)

    def _insert_run(self, body: CreateTrainerRequest, session: SessionRow,
                    resolved: ResolvedModel, deployment: DeploymentRow, reused: bool,
                    reuse_source: str | None) -> RunRow:
        run = self.store.create_run(RunRow(
            id=new_id("run"), session_id=session.id, base_model=resolved.load_path,
            requested_model=body.base_model, lora_rank=body.lora_rank, replicas=body.replicas,
            availability_model=body.availability_model, seed=body.seed,
            max_seq_len=body.max_seq_len, name=body.name, path=body.path,
            deployment_id=deployment.id, reused=int(reused),
            status=states.run_status_for(deployment.status),
            reason=None if deployment.status in LIVE_STATUSES else deployment.reason,
            created_at=now_iso(), reuse_source=reuse_source,
        ))
        logger.info("run %s on %s trainer deployment %s", run.id,
                    "reused" if reused else "new", deployment.id)
        return run

    async def _finish_run(self, run: RunRow, session: SessionRow, deployment: DeploymentRow,
                          with_sampler: bool) -> RunInfo:
        """Wait for the run's trainer (and eager paired sampler) and answer."""
        if deployment.status not in LIVE_STATUSES:
            raise self._deployment_failure(deployment)

        sampler: SamplerInfo | None = None
        if with_sampler:
            trainer_wait = asyncio.create_task(
                self.supervisor.wait_ready(deployment.id, self.settings.create_wait))
            try:
                sampler = await self.create_paired_sampler(run.id, session.id)
            except ApiError as exc:
                logger.warning("eager paired sampler for run %s failed: %s", run.id, exc)
            deployment = await trainer_wait
        else:
            deployment = await self.supervisor.wait_ready(deployment.id,
                                                          self.settings.create_wait)
        if deployment.status not in LIVE_STATUSES:
            raise self._deployment_failure(deployment)
        current = self.store.get_run(run.id) or run
        if current.status == DEPLOYING and deployment.status in READY_STATUSES:
            # It became ready between provisioning and the run's insert.
            self.store.set_run_status(run.id, RUNNING, None)
            current = self.store.get_run(run.id) or current
        return self.run_info(current, sampler=sampler)

    def _reuse_candidates(self, body: CreateTrainerRequest, resolved: ResolvedModel,
                          reuse_source: str | None) -> list[str]:
        """Trainer deployments the new run may attach to, best first."""
        if reuse_source is None:
            return []
        if body.reuse_from_run_id:
            source = self.store.get_run(body.reuse_from_run_id)
            if source is None:
                raise invalid(f"reuse_from_run_id {body.reuse_from_run_id!r} names no run of "
                              "this control plane", "UNKNOWN_RUN")
            runs = [source]
        elif body.reuse_from_session_id:
            self._session(body.reuse_from_session_id, "reuse_from_session_id")
            runs = self.store.list_runs(session_id=body.reuse_from_session_id,
                                        newest_first=True)
        else:
            return []
        # Then trainers that earlier calls reusing the same source ended up on.
        runs += self.store.list_runs(reuse_source=reuse_source, newest_first=True)
        candidates: list[str] = []
        for run in runs:
            if run.base_model == resolved.load_path and run.deployment_id not in candidates:
                candidates.append(run.deployment_id)
        return candidates

    def run_info(self, row: RunRow, sampler: SamplerInfo | None = None) -> RunInfo:
        deployment = self.store.get_deployment(row.deployment_id)
        if sampler is None:
            paired = self.store.sampler_for_run(row.id)
            sampler = self.sampler_info(paired) if paired else None
        return RunInfo(
            id=row.id, base_model=row.base_model,
            base_url=deployment.url if deployment else None,
            deployment_id=row.deployment_id, base_checkpoint=None, session_id=row.session_id,
            lora_rank=row.lora_rank, name=row.name, status=row.status, reason=row.reason,
            reused=bool(row.reused), replicas=row.replicas,
            created_at=parse_iso(row.created_at), sampler=sampler,
        )

    def get_run(self, run_id: str) -> RunInfo:
        row = self.store.get_run(run_id)
        if row is None:
            raise not_found(f"run {run_id!r} does not exist")
        return self.run_info(row)

    def list_runs(self, run_id: str | None, base_model: str | None,
                  session_id: str | None) -> list[RunInfo]:
        rows = self.store.list_runs(session_id=session_id)
        if run_id is not None:
            rows = [row for row in rows if row.id == run_id]
        if base_model is not None:
            rows = [row for row in rows if self._same_model(row.base_model, base_model)]
        return [self.run_info(row) for row in rows]

    # -- samplers --------------------------------------------------------------------------

    async def create_sampler(self, body: CreateSamplerRequest,
                             team_id: str | None) -> SamplerInfo:
        self.check_team(team_id)
        self.check_scope(body.scope)
        if body.run_id is not None:
            if body.base_model is not None or body.model_path is not None:
                raise invalid("a paired sampler (run_id) takes neither base_model nor "
                              "model_path: it serves the run's base model and live weights")
            if body.session_id is not None:
                self._session(body.session_id)
            return await self.create_paired_sampler(body.run_id, body.session_id)
        session = self._session(body.session_id)
        if (body.base_model is None) == (body.model_path is None):
            raise invalid("pass exactly one of base_model and model_path (or run_id for a "
                          "run's paired sampler)")
        if body.model_path is not None:
            checkpoint = self._checkpoint_for_path(body.model_path, "model_path")
            if checkpoint is None:
                raise invalid("model_path must be a bt://loops:<run_id>/sampler_weights/<name> "
                              "path", "INVALID_CHECKPOINT_PATH")
            base_model = checkpoint.base_model
        else:
            assert body.base_model is not None
            base_model = body.base_model
        resolved = await self._resolve(base_model, "base_model")
        self._check_length(resolved, body.max_seq_length, "max_seq_length")

        deployment: DeploymentRow | None = None
        if body.reuse_from_session_id:
            self._session(body.reuse_from_session_id, "reuse_from_session_id")
            for candidate in self.store.standalone_samplers_of_session(
                    body.reuse_from_session_id):
                if candidate.base_model == resolved.load_path and \
                        await self.supervisor.ensure_usable(candidate.id,
                                                            self.settings.create_wait):
                    deployment = candidate
                    break
        if deployment is None:
            deployment = await self.supervisor.provision(
                kind=SAMPLER, role=STANDALONE, base_model=resolved.load_path,
                launch_model=launch_name(resolved, self.home), session_id=session.id)
        sampler = self.store.create_sampler(SamplerRow(
            id=new_id("smp"), session_id=session.id, run_id=None,
            base_model=resolved.load_path, model_path=body.model_path,
            deployment_id=deployment.id, max_seq_length=body.max_seq_length,
            num_replicas=body.num_replicas, created_at=now_iso()))
        with self.supervisor.hold(deployment.id):
            deployment = await self.supervisor.wait_ready(deployment.id,
                                                          self.settings.create_wait)
        if deployment.status not in LIVE_STATUSES:
            raise self._deployment_failure(deployment)
        return self.sampler_info(sampler)

    async def create_paired_sampler(self, run_id: str, session_id: str | None) -> SamplerInfo:
        """The run's paired sampler: idempotent per run, one process per trainer deployment."""
        run = self.store.get_run(run_id)
        if run is None:
            raise invalid(f"run_id {run_id!r} names no run of this control plane",
                          "UNKNOWN_RUN")
        async with self.supervisor.lock(f"paired-run:{run_id}"):
            existing = self.store.sampler_for_run(run_id)
            deployment: DeploymentRow | None = None
            if existing is not None and await self.supervisor.ensure_usable(
                    existing.deployment_id, self.settings.create_wait):
                deployment = self.store.get_deployment(existing.deployment_id)
            if deployment is None:
                deployment = await self._paired_deployment(run, session_id)
            if existing is None:
                existing = self.store.create_sampler(SamplerRow(
                    id=new_id("smp"), session_id=session_id or run.session_id, run_id=run.id,
                    base_model=run.base_model, model_path=None, deployment_id=deployment.id,
                    max_seq_length=None, num_replicas=None, created_at=now_iso()))
            elif existing.deployment_id != deployment.id:
                self.store.move_sampler(existing.id, deployment.id)
            if deployment.url:
                # The trainer notifies this URL on every publish of the run.
                register_paired_sampler(self.home, run.id, deployment.url)
        with self.supervisor.hold(deployment.id):
            deployment = await self.supervisor.wait_ready(deployment.id,
                                                          self.settings.create_wait)
        if deployment.status not in LIVE_STATUSES:
            raise self._deployment_failure(deployment)
        sampler = self.store.get_sampler(existing.id)
        assert sampler is not None
        return self.sampler_info(sampler)

    async def _paired_deployment(self, run: RunRow, session_id: str | None) -> DeploymentRow:
        trainer = self._deployment(run.deployment_id)
        async with self.supervisor.lock(f"paired:{trainer.id}"):
            for candidate in self.store.paired_samplers_of(trainer.id):
                if (candidate.status in LIVE_STATUSES
                        or self.supervisor.is_restarting(candidate.id)) and \
                        await self.supervisor.ensure_usable(candidate.id,
                                                            self.settings.create_wait):
                    return candidate
            deployment = await self.supervisor.provision(
                kind=SAMPLER, role=PAIRED, base_model=trainer.base_model,
                launch_model=trainer.launch_model, session_id=session_id or run.session_id,
                trainer_deployment_id=trainer.id)
            # Runs of this trainer whose paired sampler died move to the new one.
            for other in self.store.list_runs(deployment_id=trainer.id):
                record = self.store.sampler_for_run(other.id)
                if record is None or record.deployment_id == deployment.id or other.id == run.id:
                    continue
                old = self.store.get_deployment(record.deployment_id)
                if old is None or old.status not in LIVE_STATUSES:
                    self.store.move_sampler(record.id, deployment.id)
                    if deployment.url:
                        register_paired_sampler(self.home, other.id, deployment.url)
            return deployment

    def sampler_info(self, row: SamplerRow) -> SamplerInfo:
        deployment = self.store.get_deployment(row.deployment_id)
        return SamplerInfo(
            id=row.id, base_url=deployment.url if deployment else None,
            model_id=deployment.model_id if deployment else None,
            deployment_id=row.deployment_id, base_checkpoint=None, base_model=row.base_model,
            run_id=row.run_id, session_id=row.session_id,
            status=deployment.status if deployment else None,
            reason=deployment.reason if deployment else None,
            model_path=row.model_path, created_at=parse_iso(row.created_at),
        )

    def get_sampler(self, sampler_id: str) -> SamplerInfo:
        row = self.store.get_sampler(sampler_id)
        if row is None:
            raise not_found(f"sampler {sampler_id!r} does not exist")
        return self.sampler_info(row)

    def list_samplers(self, session_id: str | None) -> list[SamplerInfo]:
        return [self.sampler_info(row) for row in self.store.list_samplers(session_id=session_id)]

    # -- deployments -----------------------------------------------------------------------

    def deployment_info(self, row: DeploymentRow) -> TrainerDeployment:
        sampler = None
        if row.kind == TRAINER:
            for paired in self.store.paired_samplers_of(row.id):
                if paired.status in LIVE_STATUSES:
                    sampler = SamplerInfo(id=paired.id, base_url=paired.url,
                                          model_id=paired.model_id, deployment_id=paired.id,
                                          base_model=paired.base_model, status=paired.status)
                    break
            run_ids = [run.id for run in self.store.list_runs(deployment_id=row.id)]
        else:
            run_ids = [s.run_id for s in self.store.list_samplers(deployment_id=row.id)
                       if s.run_id]
        history = [DeploymentStatus(name=event.status, reason=event.reason,
                                    updated_at=parse_iso(event.at))
                   for event in self.store.events(row.id)]
        return TrainerDeployment(
            id=row.id, kind=row.kind, role=row.role,  # type: ignore[arg-type]
            status=DeploymentStatus(name=row.status, reason=row.reason,
                                    updated_at=parse_iso(row.status_updated_at)),
            base_model=row.base_model, base_url=row.url, sampler=sampler,
            model_id=row.model_id, pid=self.supervisor.pid_of(row.id),
            restarts=row.restarts, created_at=parse_iso(row.created_at), run_ids=run_ids,
            status_history=history,
        )

    def get_deployment(self, deployment_id: str) -> TrainerDeployment:
        # Reading a status is not use: a dashboard polling it must not keep
        # servers alive.
        return self.deployment_info(self._deployment(deployment_id))

    def list_deployments(self) -> list[TrainerDeployment]:
        return [self.deployment_info(row) for row in self.store.list_deployments()]

    def sampler_model_status(self, model_id: str, deployment_id: str) -> str:
        """The model-deployment status the SDK's sampler readiness gate reads."""
        row = self.store.get_deployment(deployment_id)
        if row is None or row.kind != SAMPLER or row.model_id != model_id:
            raise not_found(f"model {model_id!r} has no deployment {deployment_id!r}")
        return states.model_status(row.status, self.supervisor.is_restarting(row.id))

    async def deactivate(self, deployment_id: str) -> TrainerDeployment:
        row = self._deployment(deployment_id)
        if states.can_move(row.status, STOPPED):
            row = await self.supervisor.stop(deployment_id, "deactivated through the API")
        return self.deployment_info(row)

    # -- capabilities ------------------------------------------------------------------------

    async def capabilities(self) -> ServerCapabilities:
        devices = await self._devices()
        models = [SupportedModel(model_name=entry.hf_id or entry.name,
                                 max_context_length=entry.max_context_length,
                                 device_classes=devices)
                  for entry in REGISTRY.values()]
        return ServerCapabilities(supported_models=models, device_classes=devices)

    async def _devices(self) -> list[str]:
        if self._device_classes is None:
            self._device_classes = ["cpu", *await asyncio.to_thread(cuda_device_names)]
        return self._device_classes

    # -- checkpoints -------------------------------------------------------------------------

    def list_checkpoints(self, run_id: str | None, checkpoint_path: str | None,
                         base_model: str | None) -> list[Checkpoint]:
        given = [name for name, value in (("run_id", run_id),
                                          ("checkpoint_path", checkpoint_path),
                                          ("base_model", base_model)) if value is not None]
        if len(given) != 1:
            raise invalid("pass exactly one of the query filters run_id, checkpoint_path, "
                          f"base_model (got {', '.join(given) or 'none'})")
        if run_id is not None:
            rows = self.registry.by_run(run_id)
        elif checkpoint_path is not None:
            try:
                parsed = parse_bt_path(checkpoint_path)
            except ValueError as exc:
                raise invalid(f"checkpoint_path: {exc}", "INVALID_CHECKPOINT_PATH") from None
            if parsed.kind not in CHECKPOINT_KINDS:
                raise invalid(f"checkpoint_path {checkpoint_path!r} names no checkpoint kind",
                              "INVALID_CHECKPOINT_PATH")
            row = self.registry.by_path(parsed.run_id, parsed.kind, parsed.name)
            rows = [row] if row is not None else []
        else:
            assert base_model is not None
            try:
                rows = self.registry.by_base_model(base_model)
            except ValueError as exc:
                raise invalid(f"base_model: {exc}", "INVALID_BASE_MODEL") from None
        return [self.registry.to_wire(row) for row in rows]

    def validate_checkpoint(self, body: ValidateCheckpointRequest) -> None:
        row = self._checkpoint_for_path(body.checkpoint_path, "checkpoint_path")
        if not body.checkpoint_path.startswith("bt://"):
            raise invalid("checkpoint_path must be a bt://loops:<run_id>/sampler_weights/<name> "
                          "path", "INVALID_CHECKPOINT_PATH")
        if body.run_id and row is not None:
            run = self.store.get_run(body.run_id)
            if run is not None and row.base_model and not self._same_model(run.base_model,
                                                                           row.base_model):
                raise invalid(f"checkpoint {body.checkpoint_path!r} was trained on "
                              f"{row.base_model!r}, but run {run.id} uses {run.base_model!r}",
                              "BASE_MODEL_MISMATCH")

    def _checkpoint(self, checkpoint_id: str) -> CheckpointRow:
        row = self.registry.get(checkpoint_id)
        if row is None:
            raise not_found(f"checkpoint {checkpoint_id!r} does not exist (or has expired)")
        return row

    def checkpoint_files(self, checkpoint_id: str, page_size: int, page_token: int,
                         base_url: str) -> CheckpointFilesResponse:
        if not 1 <= page_size <= MAX_FILE_PAGE_SIZE:
            raise invalid(f"page_size = {page_size} must be between 1 and {MAX_FILE_PAGE_SIZE}")
        if page_token < 0:
            raise invalid(f"page_token = {page_token} must be >= 0")
        row = self._checkpoint(checkpoint_id)
        files = list_files(self.registry.folder(row))
        page = files[page_token:page_token + page_size]
        entries = []
        for info in page:
            token, _ = self.signer.sign(FileRef(row.run_id, row.kind, row.name,
                                                info.relative_name))
            entries.append(CheckpointFile(
                url=f"{base_url}/files/{token}", relative_file_name=info.relative_name,
                node_rank=0, size_bytes=info.size_bytes, last_modified=info.last_modified))
        following = page_token + len(page)
        return CheckpointFilesResponse(
            presigned_urls=entries,
            next_page_token=following if following < len(files) and page else None,
            total_count=len(files))

    def checkpoint_source(self, checkpoint_id: str) -> dict[str, object]:
        self._checkpoint(checkpoint_id)
        return {"source": {"kind": "s3"}}


def cuda_device_names() -> list[str]:
    """Names of the CUDA devices this machine can run on (none without a driver).

    Asked in a short-lived child so the control plane never holds a CUDA
    context (or imports torch) itself.
    """
    if shutil.which("nvidia-smi") is None:
        return []
    script = ("import json, torch; print(json.dumps([torch.cuda.get_device_name(i) "
              "for i in range(torch.cuda.device_count())] if torch.cuda.is_available() "
              "else []))")
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=120, check=True)
        names = json.loads(result.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return []
    return [str(name) for name in names]
