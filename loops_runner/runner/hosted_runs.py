"""A user's runs and samplers on a control plane: list them, stop them.

Used by the runner when a command ends (``session.keep_warm``) and by
``loops-runner runs list|show|stop``. Everything goes through the control
plane's documented routes, so it works on the local daemon and on Baseten
alike: ``GET /v1/loops/runs``, ``GET /v1/loops/samplers``,
``POST /v1/loops/deployments/{id}/deactivate?run_id=`` for a run and
``POST /v1/models/{model_id}/deployments/{id}/deactivate`` for a standalone
sampler. A run's paired sampler stops with its trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loops_runner.sdk.control_plane import ControlPlaneClient
from loops_runner.sdk.errors import LoopsError
from loops_runner.wire import RunInfo, SamplerInfo

# Statuses after which nothing of a run or sampler is running any more.
FINISHED = frozenset({"STOPPED", "FAILED", "PREEMPTED", "INACTIVE", "DEPLOY_FAILED",
                      "BUILD_FAILED", "BUILD_STOPPED"})


@dataclass(frozen=True)
class Stopped:
    """What one stop did: ``outcome`` is "stopped", "already <status>" or the error."""

    kind: str  # "run" or "sampler"
    id: str
    outcome: str

    @property
    def ok(self) -> bool:
        return not self.outcome.startswith("failed")


def is_live(status: str | None) -> bool:
    return status is not None and status.upper() not in FINISHED


def _stop(kind: str, ident: str, status: str | None,
          deactivate: Callable[[], object] | None) -> Stopped:
    if not is_live(status):
        return Stopped(kind, ident, f"already {status}")
    if deactivate is None:
        # Serverless capacity has no deployment of its own: nothing bills while idle.
        return Stopped(kind, ident, "serverless: nothing to stop")
    try:
        deactivate()
    except LoopsError as error:
        return Stopped(kind, ident, f"failed: {error}")
    return Stopped(kind, ident, "stopped")


def stop_run(control_plane: ControlPlaneClient, run: RunInfo) -> Stopped:
    """Deactivate ``run`` (only that run of a trainer several runs share)."""
    deployment_id = run.deployment_id
    return _stop("run", run.id, run.status, None if deployment_id is None else
                 lambda: control_plane.deactivate_run(deployment_id, run.id))


def stop_sampler(control_plane: ControlPlaneClient, sampler: SamplerInfo) -> Stopped:
    """Deactivate a standalone sampler's deployment."""
    model_id, deployment_id = sampler.model_id, sampler.deployment_id
    return _stop("sampler", sampler.id, sampler.status,
                 None if model_id is None or deployment_id is None else
                 lambda: control_plane.deactivate_sampler(model_id, deployment_id))


def stop_session(control_plane: ControlPlaneClient, session_id: str) -> list[Stopped]:
    """Stop every run and standalone sampler of ``session_id`` that still runs."""
    done = [stop_run(control_plane, run) for run in control_plane.list_runs(session_id)
            if is_live(run.status)]
    done += [stop_sampler(control_plane, sampler)
             for sampler in control_plane.list_samplers(session_id)
             if sampler.run_id is None and is_live(sampler.status)]
    return done
