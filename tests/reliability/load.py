"""Load drivers shared by tests/reliability/test_load.py and benchmarks/measures/soak.py.

Raw HTTP (httpx, asyncio) so the wire is what is measured: many clients, each
with its own run on one trainer, submit a mixed stream of operations pipelined
(submit everything, then collect), replay some submits with the same
Idempotency-Key, and keep every outcome for checking against a sequential
replay of the same stream.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

OP_TIMEOUT_S = 300.0


def datum(client: int, index: int) -> dict[str, Any]:
    """A small datum that differs per client and per op (so runs cannot be confused)."""
    tokens = [5 + (client * 31 + index * 7 + k) % 200 for k in range(8)]
    targets = [*tokens[1:], -100]
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens}]},
            "loss_fn_inputs": {"target_tokens": {"data": targets, "dtype": "int64",
                                                 "shape": [len(targets)]}}}


def op_stream(client: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """A mixed stream: forward_backward, optim_step and a probing forward, repeating."""
    stream: list[tuple[str, dict[str, Any]]] = []
    for index in range(count):
        kind = ("forward_backward", "optim_step", "forward")[index % 3]
        if kind == "optim_step":
            body: dict[str, Any] = {"adam_params": {"learning_rate": 1e-2}}
        else:
            body = {"data": [datum(client, index)], "loss_fn": "cross_entropy"}
        stream.append((kind, body))
    return stream


@dataclass
class ClientResult:
    run_id: str
    operation_ids: list[str] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    replays_matched: int = 0

    def losses(self) -> list[float | None]:
        return [outcome.get("result", {}).get("loss") for outcome in self.outcomes]


async def _submit(http: httpx.AsyncClient, url: str, run_id: str, kind: str,
                  body: dict[str, Any], key: str) -> str:
    response = await http.post(f"{url}/{kind}", json={"run_id": run_id, **body},
                               headers={"X-Run-Id": run_id, "Idempotency-Key": key})
    assert response.status_code == 202, f"{kind}: {response.status_code} {response.text}"
    return str(response.json()["operation_id"])


async def _outcome(http: httpx.AsyncClient, url: str, operation_id: str) -> dict[str, Any]:
    while True:
        response = await http.get(f"{url}/operations/{operation_id}")
        if response.status_code == 408:
            continue  # still running: poll again
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


async def init_run(http: httpx.AsyncClient, url: str, run_id: str, seed: int) -> None:
    body = {"lora_rank": 4, "base_model": "tiny", "seed": seed}
    operation_id = await _submit(http, url, run_id, "init_trainer_server", body,
                                 uuid.uuid4().hex)
    outcome = await _outcome(http, url, operation_id)
    assert outcome["status"] == "done", outcome


async def drive_client(http: httpx.AsyncClient, url: str, run_id: str,
                       stream: list[tuple[str, dict[str, Any]]], *, pipelined: bool = True,
                       replay_every: int = 10) -> ClientResult:
    """Submit ``stream`` for one run; every ``replay_every``-th submit is sent twice."""
    result = ClientResult(run_id)
    for index, (kind, body) in enumerate(stream):
        key = uuid.uuid4().hex
        operation_id = await _submit(http, url, run_id, kind, body, key)
        if replay_every and index % replay_every == 0:
            # A retried submit (same key, same body) must name the same operation.
            again = await _submit(http, url, run_id, kind, body, key)
            result.replays_matched += again == operation_id
        result.operation_ids.append(operation_id)
        if not pipelined:
            result.outcomes.append(await _outcome(http, url, operation_id))
    if pipelined:
        result.outcomes = [await _outcome(http, url, op) for op in result.operation_ids]
    return result


async def trainer_load(url: str, clients: int, ops_per_client: int, *, seed: int = 0,
                       run_prefix: str = "load") -> list[ClientResult]:
    """``clients`` concurrent clients, one run each, ``ops_per_client`` mixed ops each."""
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(timeout=OP_TIMEOUT_S, limits=limits) as http:
        run_ids = [f"{run_prefix}-{seed}-{client}-{uuid.uuid4().hex[:6]}"
                   for client in range(clients)]
        await asyncio.gather(*(init_run(http, url, run_id, seed + client)
                               for client, run_id in enumerate(run_ids)))
        return list(await asyncio.gather(*(
            drive_client(http, url, run_id, op_stream(client, ops_per_client))
            for client, run_id in enumerate(run_ids))))


async def sequential_replay(url: str, client: int, ops: int, seed: int) -> ClientResult:
    """The same stream as client ``client``, on a fresh run, one op at a time."""
    async with httpx.AsyncClient(timeout=OP_TIMEOUT_S) as http:
        run_id = f"replay-{client}-{uuid.uuid4().hex[:6]}"
        await init_run(http, url, run_id, seed + client)
        return await drive_client(http, url, run_id, op_stream(client, ops), pipelined=False,
                                  replay_every=0)


async def sampler_load(url: str, concurrency: int, rounds: int,
                       max_tokens: int = 8) -> list[int]:
    """``rounds`` waves of ``concurrency`` simultaneous /sample requests; their statuses."""
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=OP_TIMEOUT_S, limits=limits) as http:
        for wave in range(rounds):
            responses = await asyncio.gather(*(
                http.post(f"{url}/sample", json={
                    "prompt": [5 + (wave + i) % 50, 9, 13], "max_tokens": max_tokens,
                    "temperature": 1.0, "seed": i})
                for i in range(concurrency)))
            for response in responses:
                statuses.append(response.status_code)
                if response.status_code == 200:
                    assert response.json()["choices"], response.text
    return statuses


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)
