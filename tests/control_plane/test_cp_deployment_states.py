"""The deployment state machine on its own: no processes, no HTTP (the store is real SQLite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loops_runner.servers.control_plane import deployment_states as states
from loops_runner.servers.control_plane.deployment_states import (
    ACTIVE,
    DEPLOYING,
    FAILED,
    RUNNING,
    SAMPLER,
    STANDALONE,
    STOPPED,
    TRAINER,
)
from loops_runner.servers.control_plane.store import Store

ALL = {DEPLOYING, RUNNING, ACTIVE, FAILED, STOPPED}


def test_every_status_has_its_moves_and_stopped_is_final() -> None:
    assert set(states.TRANSITIONS) == ALL
    assert all(targets <= ALL for targets in states.TRANSITIONS.values())
    assert states.TRANSITIONS[STOPPED] == frozenset()
    assert states.READY_STATUSES | {DEPLOYING} == states.LIVE_STATUSES
    # Anything that is not stopped yet can be stopped (idle, deactivated, shut down) or fail.
    assert states.sources(STOPPED) == ALL - {STOPPED}
    assert states.sources(FAILED) == ALL - {STOPPED}
    # Nothing ever goes back to DEPLOYING: a new deployment is provisioned instead.
    assert states.sources(DEPLOYING) == frozenset()


@pytest.mark.parametrize(("kind", "ready"), [(TRAINER, RUNNING), (SAMPLER, ACTIVE)])
def test_ready_is_reached_from_deploying_and_from_failed_only_while_restarting(
        kind: str, ready: str) -> None:
    assert states.ready_status(kind) == ready
    assert states.ready_sources(restarting=False) == (DEPLOYING,)
    assert set(states.ready_sources(restarting=True)) == {DEPLOYING, FAILED}
    for restarting in (False, True):
        assert all(states.can_move(source, ready)
                   for source in states.ready_sources(restarting))
    assert not states.can_move(RUNNING, ACTIVE) and not states.can_move(ACTIVE, RUNNING)
    assert not any(states.can_move(STOPPED, status) for status in ALL)


@pytest.mark.parametrize(("closing", "ready_once", "restarts", "has_port", "restart", "note"), [
    (False, True, 0, True, True, "restarting it once on the same port"),
    (False, True, 1, True, False, "not restarting it again (already restarted 1x)"),
    (False, False, 0, True, False, "it never became healthy, so it is not restarted"),
    (False, True, 0, False, False, "it never became healthy, so it is not restarted"),
    (True, True, 0, True, False, "it never became healthy, so it is not restarted"),
    (True, True, 1, True, False, "not restarting it again (already restarted 1x)"),
])
def test_a_crashed_server_is_restarted_once_if_it_had_been_healthy(
        closing: bool, ready_once: bool, restarts: int, has_port: bool, restart: bool,
        note: str) -> None:
    decision = states.after_exit(closing=closing, ready_once=ready_once, restarts=restarts,
                                 has_port=has_port)
    assert (decision.restart, decision.note) == (restart, note)
    assert states.MAX_RESTARTS == 1


@pytest.mark.parametrize(("deployment", "run"), [
    (DEPLOYING, DEPLOYING), (RUNNING, RUNNING), (ACTIVE, RUNNING), (FAILED, FAILED),
    (STOPPED, FAILED),
])
def test_a_new_run_starts_in_its_deployments_state(deployment: str, run: str) -> None:
    assert states.run_status_for(deployment) == run
    assert set(states.OPEN_RUN_STATUSES) == {DEPLOYING, RUNNING}


@pytest.mark.parametrize(("status", "restarting", "answer"), [
    (ACTIVE, False, "ACTIVE"), (DEPLOYING, False, "DEPLOYING"), (FAILED, True, "DEPLOYING"),
    (FAILED, False, "FAILED"), (STOPPED, False, "INACTIVE"),
])
def test_the_sdk_reads_a_sampler_status_as_a_model_status(status: str, restarting: bool,
                                                          answer: str) -> None:
    assert states.model_status(status, restarting) == answer


def test_the_store_records_only_allowed_moves(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        row = store.create_deployment(kind=SAMPLER, role=STANDALONE, base_model="m",
                                      launch_model="m", log_dir=tmp_path, session_id=None)
        assert row.status == DEPLOYING
        assert not store.set_status(row.id, DEPLOYING, "again")
        assert store.set_status(row.id, ACTIVE, None)
        assert not store.set_status(row.id, RUNNING, None)  # ready does not move to ready
        assert store.set_status(row.id, FAILED, "died")
        # only_from narrows the table, never widens it.
        assert not store.set_status(row.id, DEPLOYING, None, only_from=(FAILED,))
        assert store.set_status(row.id, ACTIVE, "restarted", only_from=(DEPLOYING, FAILED))
        assert store.set_status(row.id, STOPPED, "idle")
        for status in ALL:
            assert not store.set_status(row.id, status, "after the end")
        assert [event.status for event in store.events(row.id)] == [
            DEPLOYING, ACTIVE, FAILED, ACTIVE, STOPPED]
    finally:
        store.close()
