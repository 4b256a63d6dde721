"""The deployment state machine: what a deployment can be and how its status may move.

Pure: no processes, no I/O, no clock. The supervisor decides *when* a
deployment moves; this module says *whether* it may, and the store records
only the moves allowed here (``Store.set_status``), inside its transaction.

::

    DEPLOYING --healthy--> RUNNING (trainer) / ACTIVE (sampler)
    DEPLOYING, RUNNING, ACTIVE --died, never healthy, refused its model--> FAILED
    FAILED --healthy again after its one restart--> RUNNING / ACTIVE
    FAILED --the restart did not start--> FAILED (a new reason)
    every status but STOPPED --idle, deactivated, shut down--> STOPPED (final)

A new deployment starts DEPLOYING; a deployment is never reused once STOPPED
(the next request provisions a new one). The runs on a trainer deployment
follow it: DEPLOYING -> RUNNING when it becomes ready, and DEPLOYING or
RUNNING -> FAILED or STOPPED with it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Deployment statuses. Trainers become RUNNING, samplers ACTIVE when healthy.
DEPLOYING = "DEPLOYING"
RUNNING = "RUNNING"
ACTIVE = "ACTIVE"
FAILED = "FAILED"
STOPPED = "STOPPED"
READY_STATUSES = frozenset({RUNNING, ACTIVE})
LIVE_STATUSES = frozenset({DEPLOYING, RUNNING, ACTIVE})

# Deployment kinds, and the roles of a sampler: a paired sampler follows the
# runs of one trainer deployment, a standalone one serves a base model or a
# checkpoint.
TRAINER = "trainer"
SAMPLER = "sampler"
PAIRED = "paired"
STANDALONE = "standalone"

TRANSITIONS: dict[str, frozenset[str]] = {
    DEPLOYING: frozenset({RUNNING, ACTIVE, FAILED, STOPPED}),
    RUNNING: frozenset({FAILED, STOPPED}),
    ACTIVE: frozenset({FAILED, STOPPED}),
    FAILED: frozenset({RUNNING, ACTIVE, FAILED, STOPPED}),
    STOPPED: frozenset(),
}

# A crashed server that had been healthy is restarted this many times.
MAX_RESTARTS = 1

# Run statuses a trainer deployment's status change carries its runs out of.
OPEN_RUN_STATUSES = (DEPLOYING, RUNNING)


def ready_status(kind: str) -> str:
    return RUNNING if kind == TRAINER else ACTIVE


def can_move(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


def sources(new: str) -> frozenset[str]:
    """Every status that may move to ``new``."""
    return frozenset(status for status, targets in TRANSITIONS.items() if new in targets)


def ready_sources(restarting: bool) -> tuple[str, ...]:
    """Where a healthy probe may make a deployment ready from.

    FAILED only while its restart runs: a deployment that failed for good
    stays FAILED even if something still answers on its port.
    """
    return (DEPLOYING, FAILED) if restarting else (DEPLOYING,)


@dataclass(frozen=True)
class ExitDecision:
    """What to do when a supervised server process died on its own."""

    restart: bool
    note: str  # appended to the FAILED reason


def after_exit(*, closing: bool, ready_once: bool, restarts: int,
               has_port: bool) -> ExitDecision:
    """Restart a server that had been healthy, once, on its old port (clients keep its URL)."""
    restart = not closing and ready_once and restarts < MAX_RESTARTS and has_port
    if restart:
        note = "restarting it once on the same port"
    elif ready_once and restarts >= MAX_RESTARTS:
        note = f"not restarting it again (already restarted {restarts}x)"
    else:
        note = "it never became healthy, so it is not restarted"
    return ExitDecision(restart, note)


def run_status_for(deployment_status: str) -> str:
    """The status a new run on a deployment in ``deployment_status`` starts in."""
    if deployment_status in READY_STATUSES:
        return RUNNING
    return DEPLOYING if deployment_status in LIVE_STATUSES else FAILED


def model_status(status: str, restarting: bool) -> str:
    """A sampler deployment's status as the SDK's readiness gate reads it."""
    if status == ACTIVE:
        return "ACTIVE"
    if status == DEPLOYING or restarting:
        return "DEPLOYING"
    if status == STOPPED:
        return "INACTIVE"
    return "FAILED"
