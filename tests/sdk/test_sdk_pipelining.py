"""Pipelining and issue order against the real trainer.

Ten forward_backward + optim_step pairs submitted before any result must give
the same adapter as the same calls awaited one by one; calls from several
threads or asyncio tasks sharing one client reach the trainer in issue order.
"""

from __future__ import annotations

import asyncio
import threading

from loops_runner.sdk import AdamParams, TrainingClient
from tests.sdk.helpers import LR, assert_same_probe, batch, probe

STEPS = 10


def _client(url: str, run_id: str) -> TrainingClient:
    return TrainingClient(url, lora_rank=8, base_model="tiny", run_id=run_id, ready_timeout=60)


def test_pipelined_steps_equal_steps_awaited_one_by_one(trainer_server, run_id) -> None:
    with _client(trainer_server.url, f"{run_id}-pipe") as client:
        fresh_probe = probe(client)
        futures = []
        for step in range(STEPS):
            futures.append(client.forward_backward(batch(step)))
            futures.append(client.optim_step(LR))
        assert not any(future.done() for future in futures)  # nothing awaited yet
        pipelined = [future.result() for future in futures]
        pipelined_probe = probe(client)
        pipelined_version = client.policy_version

    with _client(trainer_server.url, f"{run_id}-seq") as client:
        sequential = []
        for step in range(STEPS):
            sequential.append(client.forward_backward(batch(step)).result())
            sequential.append(client.optim_step(LR).result())
        sequential_probe = probe(client)

    assert pipelined_version == STEPS
    for a, b in zip(pipelined[::2], sequential[::2], strict=True):
        assert abs(a.loss - b.loss) <= 1e-6 * max(1.0, abs(b.loss))
    assert pipelined[-1].metrics["step"] == STEPS
    assert_same_probe(pipelined_probe, sequential_probe)
    assert fresh_probe != pipelined_probe  # training did move the adapter


def _arrivals(proxy) -> list[dict]:
    """Training-step bodies in the order the trainer accepted them."""
    return [record.json() for record in proxy.seen("POST")
            if record.status == 202 and record.path in ("/forward_backward", "/optim_step")]


def _replay(url: str, run_id: str, arrivals: list[dict], data_by_seq: dict) -> list:
    with _client(url, run_id) as client:
        for body in arrivals:
            if "adam_params" in body:
                client.optim_step(AdamParams(**body["adam_params"])).result()
            else:
                client.forward_backward(data_by_seq[body["seq_id"]]).result()
        return probe(client)


def test_four_threads_sharing_a_client_keep_issue_order(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    client = _client(front.url, f"{run_id}-threads")
    barrier = threading.Barrier(4)
    issued: dict[int, list[tuple[str, object]]] = {}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            mine = issued.setdefault(index, [])
            barrier.wait()
            for step in range(2):
                data = batch(100 * index + step, rows=1, length=5 + index + step)
                mine.append(("fb", data, client.forward_backward(data)))
                mine.append(("optim", None, client.optim_step(
                    AdamParams(learning_rate=1e-3 * (index + 1)))))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    results = {i: [(kind, data, future.result()) for kind, data, future in ops]
               for i, ops in issued.items()}
    final_probe = probe(client)
    client.close()

    arrivals = _arrivals(front)
    seq_ids = [body["seq_id"] for body in arrivals]
    assert len(seq_ids) == 16
    assert seq_ids == sorted(seq_ids), "the trainer accepted operations out of issue order"
    fb_seq = {tuple(body["data"][0]["model_input"]["chunks"][0]["tokens"]): body["seq_id"]
              for body in arrivals if "data" in body}
    data_by_seq = {}
    for index, ops in results.items():
        # Every future got the result of its own datum...
        fb_seqs = []
        for kind, data, result in ops:
            if kind == "fb":
                assert result.loss_fn_outputs[0]["logprobs"].numel == data[0].model_input.length
                seq = fb_seq[tuple(data[0].model_input.to_ints())]
                data_by_seq[seq] = data
                fb_seqs.append(seq)
        # ...and each thread's calls arrived in its program order: fb, optim, fb, ...
        lr = 1e-3 * (index + 1)
        optim_seqs = [body["seq_id"] for body in arrivals
                      if "adam_params" in body and body["adam_params"]["learning_rate"] == lr]
        mine = [seq for pair in zip(fb_seqs, optim_seqs, strict=True) for seq in pair]
        assert mine == sorted(mine) and len(mine) == 4
    # What the trainer executed in arrival order is exactly the same training.
    assert_same_probe(final_probe, _replay(trainer_server.url, f"{run_id}-replay", arrivals,
                                           data_by_seq))


def test_asyncio_tasks_sharing_a_client_keep_issue_order(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    client = _client(front.url, f"{run_id}-tasks")

    async def main() -> list:
        async def task(index: int) -> list:
            futures = []
            for step in range(2):
                futures.append(await client.forward_backward_async(
                    batch(10 * index + step, rows=1)))
                futures.append(await client.optim_step_async(LR))
            return [await future for future in futures]

        return await asyncio.gather(*(task(i) for i in range(4)))

    outcomes = asyncio.run(main())
    client.close()
    assert [len(outcome) for outcome in outcomes] == [4, 4, 4, 4]
    seq_ids = [body["seq_id"] for body in _arrivals(front)]
    assert len(seq_ids) == 16 and seq_ids == sorted(seq_ids)
    steps = sorted(result.metrics["step"] for outcome in outcomes
                   for result in outcome[1::2])
    assert steps == list(range(1, 9))
