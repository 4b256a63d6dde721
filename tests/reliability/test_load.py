"""Load: many clients on one trainer, many concurrent samples, bounded memory.

Short versions of the ``soak`` benchmark (``python -m benchmarks --only soak``: 8 x 200
ops and 2 minutes of 64 concurrent samples, figures against absolute goals).
"""

from __future__ import annotations

import asyncio
import uuid

import httpx

from loops_runner.servers.operation_store import Accepted, OperationStore
from tests.reliability.load import rss_bytes, sampler_load, sequential_replay, trainer_load

CLIENTS = 8
OPS = 12
SEED = 100


def test_concurrent_clients_lose_and_duplicate_nothing_and_keep_run_order(
        trainer_server) -> None:
    url = trainer_server.url
    asyncio.run(trainer_load(url, CLIENTS, 3, seed=SEED + 1000))  # warm-up: allocations settle
    rss_warm = rss_bytes(trainer_server.pid)
    results = asyncio.run(trainer_load(url, CLIENTS, OPS, seed=SEED))
    rss_after = rss_bytes(trainer_server.pid)

    all_ids = [op for result in results for op in result.operation_ids]
    assert len(all_ids) == CLIENTS * OPS and len(set(all_ids)) == len(all_ids)  # none shared
    for result in results:
        assert all(o["status"] == "done" for o in result.outcomes), result.outcomes
        assert result.replays_matched == len(range(0, OPS, 10))  # the replays named the same op
    # Per-run order: each client's outcomes equal a one-at-a-time replay of its stream
    # (every forward after k optimizer steps sees exactly those k steps, no more, no less).
    for client in (CLIENTS - 1,):
        replay = asyncio.run(sequential_replay(url, client, OPS, SEED))
        assert results[client].losses() == replay.losses(), client
    assert rss_after < rss_warm * 1.10, f"trainer RSS grew {rss_after / rss_warm - 1:.1%}"


def test_sixty_four_concurrent_samples(sampler_server) -> None:
    asyncio.run(sampler_load(sampler_server.url, 64, 1))  # warm-up
    rss_warm = rss_bytes(sampler_server.pid)
    statuses = asyncio.run(sampler_load(sampler_server.url, 64, 3))
    rss_after = rss_bytes(sampler_server.pid)
    assert statuses == [200] * (64 * 3)
    assert rss_after < rss_warm * 1.10, f"sampler RSS grew {rss_after / rss_warm - 1:.1%}"


def test_operation_store_retention_stays_bounded_under_load() -> None:
    """Thousands of concurrent submits: results and tombstones never pass their caps."""

    async def scenario() -> dict[str, int]:
        store = OperationStore(max_finished=50, max_tombstones=200,
                               max_result_bytes=64 * 1024)
        peak = {"finished": 0, "tombstones": 0, "bytes": 0}

        async def one(index: int) -> None:
            async def prepare() -> Accepted:
                return Accepted(job=lambda: {"value": index, "pad": "x" * 500},
                                lane=f"lane-{index % 4}")

            response = await store.submit(kind="op", body=str(index).encode(),
                                          key=f"key-{index}", prepare=prepare)
            assert response.status_code == 202
            counts = store.counts()
            peak["finished"] = max(peak["finished"], counts["done"])
            peak["tombstones"] = max(peak["tombstones"], counts["tombstones"])
            peak["bytes"] = max(peak["bytes"], counts["result_bytes"])

        for start in range(0, 3000, 300):
            await asyncio.gather(*(one(i) for i in range(start, start + 300)))
            await asyncio.sleep(0.05)
        # A late replay of an evicted submit is still recognised, never re-run.
        response = await store.submit(kind="op", body=b"2999", key="key-2999",
                                      prepare=lambda: asyncio.sleep(0, Accepted(job=dict)))
        assert response.status_code == 202
        store.begin_shutdown()
        store.close()
        return peak

    peak = asyncio.run(scenario())
    assert 0 < peak["finished"] <= 51  # the cap, plus the one finishing as it is counted
    assert peak["tombstones"] <= 200
    assert peak["bytes"] <= 64 * 1024 + 1024


def test_idle_runs_move_to_disk_and_come_back_bit_identical(
        tmp_path_factory, tiny_model_dir, trainer_server) -> None:
    """A trainer capped at 2 resident runs serves 5; every run continues exactly.

    The reference is the session trainer (no eviction at 5 runs): the same ops
    give the same losses and weights there.
    """
    import shutil

    import torch

    from tests.servers import start_server
    from tests.trainer.trainer_helpers import Trainer, datum

    home = tmp_path_factory.mktemp("evicting_home")
    shutil.copytree(tiny_model_dir.parent, home / tiny_model_dir.parent.name,
                    dirs_exist_ok=True)
    server = start_server(["trainer", "--base-model", "tiny"], home, "evicting-trainer.log",
                          health_path="/health?base_model=tiny",
                          env={"LOOPS_TRAINER_MAX_RESIDENT_RUNS": "2"})
    try:
        def train(trainer: Trainer, index: int) -> float:
            loss = trainer.forward_backward([datum([5 + index, 9, 13, 17, 21, 25])])["loss"]
            trainer.optim_step(1e-2)
            return float(loss)

        runs = [Trainer(server.url, f"evict-{i}") for i in range(5)]
        tag = uuid.uuid4().hex[:6]
        references = [Trainer(trainer_server.url, f"evict-ref-{i}-{tag}") for i in range(5)]
        for trainer in (*runs, *references):
            trainer.init(rank=4, seed=7)
        for round_index in range(2):
            for i, (trainer, reference) in enumerate(zip(runs, references, strict=True)):
                assert train(trainer, i + round_index) == train(reference, i + round_index)
        health = httpx.get(f"{server.url}/health", timeout=30).json()
        assert health["runs"] == 5 and health["resident_runs"] == 2
        assert (home / "runs" / "evict-0" / ".resident" / "state.safetensors").is_file()
        for trainer, reference in zip(runs, references, strict=True):
            weights, _ = trainer.tensors("adapter")  # brings an evicted run back
            expected, _ = reference.tensors("adapter")
            assert all(torch.equal(weights[k], expected[k]) for k in expected)
            assert trainer.policy_version() == reference.policy_version() == 2
        # Nothing on disk is listed as a checkpoint.
        assert not list((home / "runs").glob("*/*/*/checkpoint.json"))
    finally:
        server.stop()
