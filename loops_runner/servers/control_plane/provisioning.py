"""Requests that start or stop servers: sessions, runs, samplers, deactivation.

Presentation (spec 1.1): runs and samplers are *dedicated* deployments. One
trainer process hosts many runs (one adapter slot each, created by the
client's ``init_trainer_server``); one paired sampler process per trainer
deployment follows all of its runs (live adapter per ``X-Run-Id``). A create
call reuses a healthy deployment where the request asks for it, else places
the run on a running trainer of its model with room (``placement``), else
asks the supervisor for a new one, and answers once it is ready (or after
``Settings.create_wait``, still deploying). Deactivation stops one run of a
shared trainer, and the process only with its last open run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from loops_runner.models.registry import REGISTRY, ResolvedModel, canonical_model_id
from loops_runner.servers.common import Refusal
from loops_runner.servers.control_plane import deployment_states as states
from loops_runner.servers.control_plane.checks import (
    Checks,
    deployment_failure,
    invalid,
    not_found,
)
from loops_runner.servers.control_plane.deployment_states import (
    DEPLOYING,
    LIVE_STATUSES,
    OPEN_RUN_STATUSES,
    PAIRED,
    READY_STATUSES,
    RUNNING,
    SAMPLER,
    STANDALONE,
    STOPPED,
    TRAINER,
)
from loops_runner.servers.control_plane.placement import Placement, lock_key, open_runs
from loops_runner.servers.control_plane.store import Store, new_id, now_iso
from loops_runner.servers.control_plane.supervisor import Supervisor
from loops_runner.servers.control_plane.tables import (
    DeploymentRow,
    RunRow,
    SamplerRow,
    SessionRow,
)
from loops_runner.servers.control_plane.views import Views
from loops_runner.storage.weight_sync import register_paired_sampler
from loops_runner.wire.control_plane import (
    CreateSamplerRequest,
    CreateSessionRequest,
    CreateTrainerRequest,
    RunInfo,
    SamplerInfo,
    SessionInfo,
    TrainerDeployment,
)

logger = logging.getLogger(__name__)


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


@dataclass
class Provisioning:
    home: Path
    store: Store
    supervisor: Supervisor
    checks: Checks
    views: Views
    # How long a create call waits for the new server's health before it
    # answers anyway.
    create_wait: float
    placement: Placement

    # -- sessions --------------------------------------------------------------------

    def create_session(self, body: CreateSessionRequest, team_id: str | None) -> SessionInfo:
        self.checks.team(team_id)
        row = self.store.create_session(body.training_project_id, team_id)
        return self.views.session_info(row)

    # -- runs (trainers) -----------------------------------------------------------------

    async def create_run(self, body: CreateTrainerRequest, team_id: str | None, *,
                         with_sampler: bool = False) -> RunInfo:
        self.checks.team(team_id)
        self.checks.scope(body.scope)
        session = self.checks.session(body.session_id)
        if body.reuse_from_run_id and body.reuse_from_session_id:
            raise invalid("pass at most one of reuse_from_run_id and reuse_from_session_id")
        if body.base_checkpoint is not None:
            raise Refusal(501, "base_checkpoint is not supported by the local control plane: "
                                "pass the merged model as base_model (a local directory or "
                                "Hugging Face id) instead", "NOT_SUPPORTED")
        resolved = await self.checks.resolved_model(body.base_model, "base_model")
        self.checks.context_length(resolved, body.max_seq_len, "max_seq_len")
        if body.path is not None:
            checkpoint = self.checks.checkpoint_for_path(body.path, "path")
            if checkpoint is not None:
                if checkpoint.base_model and not self.checks.same_model(checkpoint.base_model,
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
        launch_model = launch_name(resolved, self.home)
        async with serial:
            deployment: DeploymentRow | None = None
            for candidate in self._reuse_candidates(body, resolved, reuse_source):
                if await self.supervisor.ensure_usable(candidate, self.create_wait):
                    deployment = self.store.get_deployment(candidate)
                    break
            # Creates of one model take turns from the placement choice to the
            # run's insert, so each counts the runs placed before it.
            shared = body.replicas == 1 and deployment is None
            placing = (self.supervisor.lock(lock_key(resolved.load_path)) if shared
                       else contextlib.nullcontext())
            async with placing:
                if shared:
                    deployment = await self.placement.shared_trainer(
                        resolved.load_path, launch_model, self.create_wait)
                reused = deployment is not None
                if deployment is None:
                    deployment = await self.supervisor.provision(
                        kind=TRAINER, role=TRAINER, base_model=resolved.load_path,
                        launch_model=launch_model, session_id=session.id)
                assert deployment is not None
                run = self._insert_run(body, session, resolved, deployment, reused,
                                       reuse_source)
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
            raise deployment_failure(deployment)

        sampler: SamplerInfo | None = None
        if with_sampler:
            trainer_wait = asyncio.create_task(
                self.supervisor.wait_ready(deployment.id, self.create_wait))
            try:
                sampler = await self.create_paired_sampler(run.id, session.id)
            except Refusal as exc:
                logger.warning("eager paired sampler for run %s failed: %s", run.id, exc)
            deployment = await trainer_wait
        else:
            deployment = await self.supervisor.wait_ready(deployment.id,
                                                          self.create_wait)
        if deployment.status not in LIVE_STATUSES:
            raise deployment_failure(deployment)
        current = self.store.get_run(run.id) or run
        if current.status == DEPLOYING and deployment.status in READY_STATUSES:
            # It became ready between provisioning and the run's insert.
            self.store.set_run_status(run.id, RUNNING, None)
            current = self.store.get_run(run.id) or current
        return self.views.run_info(current, sampler=sampler)

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
            self.checks.session(body.reuse_from_session_id, "reuse_from_session_id")
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

    # -- samplers --------------------------------------------------------------------------

    async def create_sampler(self, body: CreateSamplerRequest,
                             team_id: str | None) -> SamplerInfo:
        self.checks.team(team_id)
        self.checks.scope(body.scope)
        if body.run_id is not None:
            if body.base_model is not None or body.model_path is not None:
                raise invalid("a paired sampler (run_id) takes neither base_model nor "
                              "model_path: it serves the run's base model and live weights")
            if body.session_id is not None:
                self.checks.session(body.session_id)
            return await self.create_paired_sampler(body.run_id, body.session_id)
        session = self.checks.session(body.session_id)
        if (body.base_model is None) == (body.model_path is None):
            raise invalid("pass exactly one of base_model and model_path (or run_id for a "
                          "run's paired sampler)")
        if body.model_path is not None:
            checkpoint = self.checks.checkpoint_for_path(body.model_path, "model_path")
            if checkpoint is None:
                raise invalid("model_path must be a bt://loops:<run_id>/sampler_weights/<name> "
                              "path", "INVALID_CHECKPOINT_PATH")
            base_model = checkpoint.base_model
        else:
            assert body.base_model is not None
            base_model = body.base_model
        resolved = await self.checks.resolved_model(base_model, "base_model")
        self.checks.context_length(resolved, body.max_seq_length, "max_seq_length")

        deployment: DeploymentRow | None = None
        if body.reuse_from_session_id:
            self.checks.session(body.reuse_from_session_id, "reuse_from_session_id")
            for candidate in self.store.standalone_samplers_of_session(
                    body.reuse_from_session_id):
                if candidate.base_model == resolved.load_path and \
                        await self.supervisor.ensure_usable(candidate.id,
                                                            self.create_wait):
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
                                                          self.create_wait)
        if deployment.status not in LIVE_STATUSES:
            raise deployment_failure(deployment)
        return self.views.sampler_info(sampler)

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
                    existing.deployment_id, self.create_wait):
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
                                                          self.create_wait)
        if deployment.status not in LIVE_STATUSES:
            raise deployment_failure(deployment)
        sampler = self.store.get_sampler(existing.id)
        assert sampler is not None
        return self.views.sampler_info(sampler)

    async def _paired_deployment(self, run: RunRow, session_id: str | None) -> DeploymentRow:
        trainer = self.checks.deployment(run.deployment_id)
        async with self.supervisor.lock(f"paired:{trainer.id}"):
            for candidate in self.store.paired_samplers_of(trainer.id):
                if (candidate.status in LIVE_STATUSES
                        or self.supervisor.is_restarting(candidate.id)) and \
                        await self.supervisor.ensure_usable(candidate.id,
                                                            self.create_wait):
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

    # -- deployments -----------------------------------------------------------------------

    async def deactivate(self, deployment_id: str, run_id: str | None = None,
                         force: bool = False) -> TrainerDeployment:
        """Stop a deployment, or one run of a shared trainer deployment.

        With ``run_id`` only that run stops; its trainer process stops once no
        open run remains on it. Without it, a trainer that still hosts other
        open runs is refused (409) unless ``force``: runs placed on a shared
        process must not lose it because one client is done.
        """
        row = self.checks.deployment(deployment_id)
        hosted = open_runs(self.store.list_runs(deployment_id=row.id)) \
            if row.kind == TRAINER else []
        if run_id is not None:
            run = self.store.get_run(run_id)
            if run is None or run.deployment_id != row.id:
                raise invalid(f"run_id {run_id!r} is not a run of deployment {row.id!r}",
                              "UNKNOWN_RUN")
            if run.status in OPEN_RUN_STATUSES:
                self.store.set_run_status(run.id, STOPPED, "deactivated through the API")
            hosted = [other for other in hosted if other.id != run.id]
            if hosted:
                return self.views.deployment_info(self.checks.deployment(row.id))
        elif len(hosted) > 1 and not force:
            names = ", ".join(other.id for other in hosted)
            raise Refusal(409, f"deployment {row.id} is a trainer shared by {len(hosted)} open "
                                f"runs ({names}): pass run_id=<run> to stop one run (the "
                                "process stops with its last run), or force=true to stop the "
                                "process and all of them", "DEPLOYMENT_SHARED")
        if states.can_move(row.status, STOPPED):
            row = await self.supervisor.stop(deployment_id, "deactivated through the API")
        if row.kind == TRAINER:
            # A paired sampler only serves its trainer's runs: on a hosted
            # service it would bill on, idle, after the trainer stopped.
            for sampler in self.store.paired_samplers_of(row.id):
                if states.can_move(sampler.status, STOPPED):
                    await self.supervisor.stop(sampler.id, f"its trainer {row.id} was "
                                                           "deactivated")
        return self.views.deployment_info(row)

    async def deactivate_sampler(self, model_id: str, deployment_id: str) -> str:
        """Stop a sampler deployment (Baseten's model deployment route); its new status.

        A paired sampler serves every open run of its trainer, so it stops with
        its trainer (``deactivate``) and is refused here while runs remain.
        """
        row = self.store.get_deployment(deployment_id)
        if row is None or row.kind != SAMPLER or row.model_id != model_id:
            raise not_found(f"model {model_id!r} has no deployment {deployment_id!r}")
        if row.role == PAIRED and row.trainer_deployment_id:
            hosted = open_runs(self.store.list_runs(deployment_id=row.trainer_deployment_id))
            if hosted:
                names = ", ".join(run.id for run in hosted)
                raise Refusal(409, f"sampler deployment {row.id} is paired with trainer "
                                    f"{row.trainer_deployment_id}, which still hosts open runs "
                                    f"({names}); deactivate the runs and it stops with them",
                               "DEPLOYMENT_SHARED")
        if states.can_move(row.status, STOPPED):
            row = await self.supervisor.stop(deployment_id, "deactivated through the API")
        return states.model_status(row.status, False)
