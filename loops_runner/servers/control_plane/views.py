"""What the control plane answers about its state: sessions, runs, samplers, deployments.

Rows of the store become wire models here. Reading is not use: nothing here
counts as activity, so a dashboard polling statuses never keeps servers alive.
"""

from __future__ import annotations

from dataclasses import dataclass

from loops_runner.servers.control_plane import deployment_states as states
from loops_runner.servers.control_plane.checks import Checks, not_found
from loops_runner.servers.control_plane.deployment_states import (
    LIVE_STATUSES,
    SAMPLER,
    TRAINER,
)
from loops_runner.servers.control_plane.store import Store, parse_iso
from loops_runner.servers.control_plane.supervisor import Supervisor
from loops_runner.servers.control_plane.tables import (
    DeploymentRow,
    RunRow,
    SamplerRow,
    SessionRow,
)
from loops_runner.wire.control_plane import (
    DeploymentStatus,
    RunInfo,
    SamplerInfo,
    SessionInfo,
    TrainerDeployment,
)


@dataclass
class Views:
    store: Store
    supervisor: Supervisor
    checks: Checks

    # -- sessions --------------------------------------------------------------------

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
            rows = [row for row in rows if self.checks.same_model(row.base_model, base_model)]
        return [self.run_info(row) for row in rows]

    # -- samplers --------------------------------------------------------------------------

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
        return self.deployment_info(self.checks.deployment(deployment_id))

    def list_deployments(self) -> list[TrainerDeployment]:
        return [self.deployment_info(row) for row in self.store.list_deployments()]

    def sampler_model_status(self, model_id: str, deployment_id: str) -> str:
        """The model-deployment status the SDK's sampler readiness gate reads."""
        row = self.store.get_deployment(deployment_id)
        if row is None or row.kind != SAMPLER or row.model_id != model_id:
            raise not_found(f"model {model_id!r} has no deployment {deployment_id!r}")
        return states.model_status(row.status, self.supervisor.is_restarting(row.id))
