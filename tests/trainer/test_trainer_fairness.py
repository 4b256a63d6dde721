"""Runs sharing one trainer take turns: a burst of one run does not starve another.

A real trainer (the session's ``trainer_server``): run A submits a burst of
forward_backward / optim_step pairs without waiting, run B submits one
operation right after. B's operation must finish while A's burst is still
queued, and A's operations must still run in the order A submitted them
(spec 4.2).
"""

from __future__ import annotations

import uuid
from typing import Any

from loops_runner.servers.launch import ServerProcess
from tests.trainer.trainer_helpers import Trainer, datum

PAIRS = 25  # 50 operations in A's burst
COPIES = 8  # datums per forward_backward: enough work that the burst queues up


def _tokens(index: int) -> list[int]:
    # Lengths grow with the index, so each optim_step's token count says which
    # forward_backward it followed.
    return [(7 * index + position) % 200 + 10 for position in range(8 + index)]


def _pending(trainer: Trainer) -> int:
    health = trainer.client.get(f"{trainer.url}/health").json()
    counts: dict[str, int] = health["operations"]
    return counts["pending"] + counts["running"]


def test_one_run_burst_does_not_starve_another(trainer_server: ServerProcess) -> None:
    run_a = Trainer(trainer_server.url, f"test-fair-a-{uuid.uuid4().hex[:8]}")
    run_b = Trainer(trainer_server.url, f"test-fair-b-{uuid.uuid4().hex[:8]}")
    run_a.init(rank=4, seed=1)
    run_b.init(rank=4, seed=2)

    burst: list[tuple[str, str]] = []  # (op, operation_id) in submission order
    for index in range(PAIRS):
        data = [datum(_tokens(index))] * COPIES
        for op, body in (("forward_backward", {"data": data, "loss_fn": "cross_entropy"}),
                         ("optim_step", {"adam_params": {"learning_rate": 1e-3}})):
            response = run_a.submit(op, body)
            assert response.status_code == 202, response.text
            burst.append((op, response.json()["operation_id"]))
    queued_behind = _pending(run_a)
    # Otherwise the trainer kept up with the submits and there was nothing to
    # jump: the test would prove nothing.
    assert queued_behind >= 10, f"only {queued_behind} of A's operations were queued"

    b_result = run_b.forward_backward([datum(_tokens(0))])
    left_when_b_finished = _pending(run_a)
    assert b_result["metrics"], b_result
    # FIFO across runs would have drained all of A's burst first (0 left).
    assert left_when_b_finished >= queued_behind - 5, (
        f"B finished with {left_when_b_finished} of A's operations left "
        f"(of {queued_behind} queued when B was submitted)")

    results = [(op, run_a.poll(operation_id)) for op, operation_id in burst]
    assert all(outcome["status"] == "done" for _, outcome in results), results
    steps = [outcome["result"]["metrics"] for op, outcome in results if op == "optim_step"]
    # A's own order held: step k followed the k-th forward_backward (whose
    # token count grows with k).
    assert [int(metrics["step"]) for metrics in steps] == list(range(1, PAIRS + 1))
    tokens = [metrics["num_loss_tokens"] for metrics in steps]
    assert tokens == sorted(tokens) and len(set(tokens)) == PAIRS, tokens


def test_runs_keep_their_order_when_interleaved(trainer_server: ServerProcess) -> None:
    """Two runs submitting alternately: each run's steps still count 1, 2, 3 ..."""
    runs = [Trainer(trainer_server.url, f"test-fair-{name}-{uuid.uuid4().hex[:8]}")
            for name in ("x", "y")]
    for seed, run in enumerate(runs):
        run.init(rank=4, seed=seed)
    submitted: list[tuple[Trainer, str]] = []
    for _ in range(4):
        for run in runs:
            for op, body in (("forward_backward", {"data": [datum(_tokens(3))],
                                                   "loss_fn": "cross_entropy"}),
                             ("optim_step", {"adam_params": {"learning_rate": 1e-3}})):
                response = run.submit(op, body)
                assert response.status_code == 202, response.text
                if op == "optim_step":
                    submitted.append((run, response.json()["operation_id"]))
    steps: dict[str, list[int]] = {run.run_id: [] for run in runs}
    for run, operation_id in submitted:
        outcome: dict[str, Any] = run.poll(operation_id)
        assert outcome["status"] == "done", outcome
        steps[run.run_id].append(int(outcome["result"]["metrics"]["step"]))
    assert all(found == [1, 2, 3, 4] for found in steps.values()), steps
