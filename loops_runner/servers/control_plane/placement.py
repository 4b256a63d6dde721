"""Placement: which running trainer process a new run shares (issue #17).

A trainer process already serves many runs, each with its own adapter slot and
optimizer state, and one CPU or GPU trains them one operation at a time
anyway. So by default a new run goes onto a healthy trainer deployment of the
same base model (same resolved load path and the same launch arguments) that
hosts fewer than ``runs_per_trainer`` open runs, instead of paying for a new
process (its own ~10 s start and a second copy of the base model in memory).

Cap 1 keeps one process per run. Deployments that a ``replicas > 1`` run asked
for as fresh capacity are never shared. The caller holds the per-model
placement lock (``lock_key``) from the choice until the run's row is
inserted, so concurrent creates see each other's runs and the second to the
``cap``-th attach to the first one's process instead of each starting one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loops_runner.servers.control_plane.deployment_states import (
    LIVE_STATUSES,
    OPEN_RUN_STATUSES,
    TRAINER,
)
from loops_runner.wire.placement import MAX_RUNS_PER_TRAINER

if TYPE_CHECKING:  # the CLI and the runner read the default without the store's imports
    from loops_runner.servers.control_plane.store import Store
    from loops_runner.servers.control_plane.supervisor import Supervisor
    from loops_runner.servers.control_plane.tables import DeploymentRow, RunRow



def check_runs_per_trainer(value: int, field: str = "runs_per_trainer") -> int:
    """The cap, or a ValueError naming ``field`` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if not 1 <= value <= MAX_RUNS_PER_TRAINER:
        raise ValueError(f"{field} must be between 1 and {MAX_RUNS_PER_TRAINER} "
                         f"(1 = one trainer process per run), got {value}")
    return value


def lock_key(load_path: str) -> str:
    return f"place:{load_path}"


def open_runs(runs: list[RunRow]) -> list[RunRow]:
    return [run for run in runs if run.status in OPEN_RUN_STATUSES]


def has_room(runs: list[RunRow], cap: int) -> bool:
    """Whether a deployment hosting ``runs`` may take one more under ``cap``.

    Runs that failed or stopped no longer hold a slot (a restarted trainer
    lost them); a run that asked for ``replicas > 1`` keeps its process to
    itself.
    """
    if any(run.replicas > 1 for run in runs):
        return False
    return len(open_runs(runs)) < cap


@dataclass
class Placement:
    store: Store
    supervisor: Supervisor
    runs_per_trainer: int

    def candidates(self, load_path: str, launch_model: str) -> list[DeploymentRow]:
        """Trainer deployments a new run of this model may share, oldest first."""
        if self.runs_per_trainer <= 1:
            return []
        found = []
        for row in self.store.list_deployments():
            if row.kind != TRAINER or row.base_model != load_path \
                    or row.launch_model != launch_model:
                continue
            if row.status not in LIVE_STATUSES and not self.supervisor.is_restarting(row.id):
                continue
            if has_room(self.store.list_runs(deployment_id=row.id), self.runs_per_trainer):
                found.append(row)
        return found

    async def shared_trainer(self, load_path: str, launch_model: str,
                             wait: float) -> DeploymentRow | None:
        """The first candidate that is (or becomes, within ``wait``) healthy."""
        for row in self.candidates(load_path, launch_model):
            if await self.supervisor.ensure_usable(row.id, wait):
                return self.store.get_deployment(row.id)
        return None
