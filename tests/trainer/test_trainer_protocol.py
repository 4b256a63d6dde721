"""The trainer's wire protocol (spec 4.1, 4.7, 8): submit/poll, dedupe, order, health."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.trainer.trainer_helpers import Trainer, datum


def test_submit_poll_shapes_and_local_run(trainer_server) -> None:
    """Local mode: run_id null and no X-Run-Id map to the default run slot."""
    key = uuid.uuid4().hex
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{trainer_server.url}/init_trainer_server",
                               json={"lora_rank": 2, "base_model": "tiny", "run_id": None,
                                     "seq_id": 1, "model": "tiny"},
                               headers={"Idempotency-Key": key})
        assert response.status_code == 202
        assert response.json() == {"operation_id": key, "schema_version": 1}
        assert response.headers["Location"] == f"/operations/{key}"
        while (poll := client.get(f"{trainer_server.url}/operations/{key}")).status_code == 408:
            pass
        assert poll.status_code == 200
        assert poll.json() == {"status": "done", "result": {"step": 0, "lora_rank": 2}}
        version = client.get(f"{trainer_server.url}/policy_version")
        assert version.status_code == 200 and version.json() == {"policy_version": 0}
        assert client.get(f"{trainer_server.url}/operations/{uuid.uuid4().hex}").status_code == 404


def test_same_submit_replayed_concurrently_runs_once(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init()
    trainer.forward_backward([datum([5, 6, 7, 8])])
    key = uuid.uuid4().hex
    body = {"adam_params": {"learning_rate": 1e-3}}

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: trainer.submit("optim_step", body, key), range(20)))
    assert [r.status_code for r in responses] == [202] * 20
    assert {r.json()["operation_id"] for r in responses} == {key}
    assert trainer.poll(key)["result"]["metrics"]["step"] == 1.0
    assert trainer.policy_version() == 1  # one optim_step applied, not twenty

    conflict = trainer.submit("optim_step", {"adam_params": {"learning_rate": 2e-3}}, key)
    assert conflict.status_code == 409
    assert "already used" in conflict.json()["detail"]
    other_op = trainer.submit("forward", {"data": []}, key)
    assert other_op.status_code == 409
    assert trainer.policy_version() == 1


def test_thirty_back_to_back_ops_execute_in_acceptance_order(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init()
    ids = []
    for i in range(30):  # submitted without waiting for any result
        body = {"adam_params": {"learning_rate": (i + 1) * 1e-6}, "seq_id": i + 2}
        response = trainer.submit("optim_step", body)
        assert response.status_code == 202
        ids.append(response.json()["operation_id"])
    results = [trainer.poll(operation_id)["result"]["metrics"] for operation_id in ids]
    assert [m["step"] for m in results] == [float(i + 1) for i in range(30)]
    assert [round(m["learning_rate"] * 1e6) for m in results] == list(range(1, 31))
    assert trainer.policy_version() == 30


def test_execution_error_is_reported_in_the_operation(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init()
    outcome = trainer.op_outcome("load_state", {"path": f"bt://loops:{run_id}/weights/nothing"})
    assert outcome["status"] == "error"
    assert outcome["error_class"] == "FileNotFoundError"
    assert "does not exist" in outcome["error"]


def test_health_per_model(trainer_server, tiny_model_dir) -> None:
    url = trainer_server.url
    assert httpx.get(f"{url}/health?base_model=tiny").status_code == 200
    assert httpx.get(f"{url}/health", params={"base_model": str(tiny_model_dir)}).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
    refused = httpx.get(f"{url}/health", params={"base_model": "Qwen/Qwen3-8B"})
    assert refused.status_code == 404
    assert refused.headers["X-Baseten-Error-Source"] == "06"
    assert refused.headers["X-Baseten-Error-Code"] == "model_not_served"
    assert "Qwen/Qwen3-8B" in refused.json()["detail"]


def test_unknown_run_and_run_id_disagreement_are_422(trainer_server, run_id: str) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    response = trainer.submit("forward", {"data": [datum([1, 2, 3])]})
    assert response.status_code == 422
    assert response.json()["details"]["reason"] == "UNKNOWN_RUN"
    version = httpx.get(f"{trainer_server.url}/policy_version", headers={"X-Run-Id": run_id})
    assert version.status_code == 422
    assert version.json()["details"]["reason"] == "UNKNOWN_RUN"

    trainer.init()
    mismatch = trainer.client.post(f"{trainer_server.url}/optim_step",
                                   json={"run_id": "someone-else", "adam_params": {}},
                                   headers=trainer.headers(uuid.uuid4().hex))
    assert mismatch.status_code == 422
    assert mismatch.json()["details"]["reason"] == "RUN_ID_MISMATCH"
    assert trainer.policy_version() == 0


def test_init_resets_only_its_own_run(trainer_server, run_id: str) -> None:
    first = Trainer(trainer_server.url, f"{run_id}-a")
    second = Trainer(trainer_server.url, f"{run_id}-b")
    for trainer in (first, second):
        trainer.init(seed=1)
        trainer.forward_backward([datum([9, 8, 7, 6, 5])])
        trainer.optim_step(1e-2)
    second_before, _ = second.tensors("adapter")
    assert first.init(seed=1) == {"step": 0, "lora_rank": 4}
    assert first.policy_version() == 0
    assert second.policy_version() == 1
    second_after, _ = second.tensors("adapter")
    assert all((second_after[k] == second_before[k]).all() for k in second_before)


def test_unimplemented_routes_are_501_not_404(trainer_server) -> None:
    """A 404 would make the SDK retry for an hour (spec 2.3)."""
    response = httpx.post(f"{trainer_server.url}/forward_backward_custom", json={})
    assert response.status_code == 501
    assert "not implemented" in response.json()["detail"]
