"""Placement without servers: the cap's checks, slots, and which trainers are candidates."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from loops_runner.runner.config import LocalBackend
from loops_runner.servers.control_plane.deployment_states import (
    FAILED,
    RUNNING,
    SAMPLER,
    STANDALONE,
    STOPPED,
    TRAINER,
)
from loops_runner.servers.control_plane.placement import (
    Placement,
    check_runs_per_trainer,
    has_room,
)
from loops_runner.servers.control_plane.service import Settings
from loops_runner.servers.control_plane.store import Store, new_id, now_iso
from loops_runner.servers.control_plane.supervisor import Supervisor
from loops_runner.servers.control_plane.tables import DeploymentRow, RunRow


@pytest.mark.parametrize("bad", [0, -3, 1025, True, 2.5])
def test_cap_out_of_range_is_refused_with_field_and_limit(bad: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs_per_trainer"):
        check_runs_per_trainer(bad)  # type: ignore[arg-type]
    if isinstance(bad, int) and not isinstance(bad, bool):
        with pytest.raises(ValueError, match=r"between 1 and 1024.*got"):
            Settings(home=tmp_path, runs_per_trainer=bad)
        with pytest.raises(ValidationError, match="runs_per_trainer"):
            LocalBackend(runs_per_trainer=bad)
    assert check_runs_per_trainer(1) == 1 and Settings(home=tmp_path).runs_per_trainer == 8


def _deployment(store: Store, tmp_path: Path, *, kind: str = TRAINER, model: str = "/m",
                launch: str = "tiny", status: str = RUNNING) -> DeploymentRow:
    role = TRAINER if kind == TRAINER else STANDALONE
    row = store.create_deployment(kind=kind, role=role, base_model=model, launch_model=launch,
                                  log_dir=tmp_path / "logs", session_id=None)
    assert store.set_status(row.id, status, None)
    found = store.get_deployment(row.id)
    assert found is not None
    return found


def _run(store: Store, deployment: DeploymentRow, *, status: str = RUNNING,
         replicas: int = 1) -> RunRow:
    return store.create_run(RunRow(
        id=new_id("run"), session_id="s", base_model=deployment.base_model,
        requested_model="tiny", lora_rank=8, replicas=replicas,
        availability_model="dedicated", seed=None, max_seq_len=None, name=None, path=None,
        deployment_id=deployment.id, reused=0, status=status, reason=None,
        created_at=now_iso()))


def test_slots_count_open_runs_only_and_replicas_keep_a_process(tmp_path: Path) -> None:
    store = Store(tmp_path)
    row = _deployment(store, tmp_path)
    runs = [_run(store, row), _run(store, row, status=FAILED), _run(store, row, status=STOPPED)]
    assert has_room(runs, 2) and not has_room(runs, 1)
    assert not has_room([_run(store, row, replicas=2)], 8)


def test_candidates_same_model_launch_and_live_with_room(tmp_path: Path) -> None:
    store = Store(tmp_path)
    placement = Placement(store, Supervisor(store, tmp_path, idle_timeout=60.0), 2)
    full, roomy = _deployment(store, tmp_path), _deployment(store, tmp_path)
    _run(store, full)
    _run(store, full)
    _run(store, roomy)
    other_model = _deployment(store, tmp_path, model="/other")
    other_launch = _deployment(store, tmp_path, launch="/m")
    failed = _deployment(store, tmp_path, status=FAILED)  # not restarting: gone for good
    sampler = _deployment(store, tmp_path, kind=SAMPLER)
    found = [row.id for row in placement.candidates("/m", "tiny")]
    assert found == [roomy.id]
    for excluded in (full, other_model, other_launch, failed, sampler):
        assert excluded.id not in found
    # Cap 1: one process per run, whatever is running.
    assert Placement(store, placement.supervisor, 1).candidates("/m", "tiny") == []
    store.close()
