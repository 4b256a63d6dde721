"""TrainingClient against the real trainer: wire shape, futures, custom loss, chunking.

These tests build ``TrainingClient(trainer_url, run_id=...)`` by hand (spec 8):
each test has a run of its own on the shared trainer.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from loops_runner import __version__
from loops_runner.sdk import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    TensorData,
    TrainingClient,
    UnsupportedOperationError,
)
from loops_runner.sdk.chunking import CHUNK_UPLOADS
from tests.sdk.helpers import LR, assert_same_probe, batch, probe, sft_datum


def _client(url: str, run_id: str | None, **kwargs) -> TrainingClient:
    kwargs.setdefault("ready_timeout", 60)
    kwargs.setdefault("base_model", "tiny")
    return TrainingClient(url, lora_rank=8, run_id=run_id, **kwargs)


def test_requests_carry_the_protocol_headers_and_fields(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id, api_key="k-123") as client:
        client.forward_backward(batch(1)).result()
        client.optim_step(LR).result()
    posts = front.seen("POST")
    assert [p.path for p in posts] == ["/init_trainer_server", "/forward_backward",
                                       "/optim_step"]
    assert [p.json()["seq_id"] for p in posts] == [1, 2, 3]
    init = posts[0].json()
    assert init["lora_rank"] == 8 and init["base_model"] == "tiny" and "seed" not in init
    for post in posts:
        body = post.json()
        assert body["run_id"] == run_id and body["model"] == "tiny"
        assert re.fullmatch(r"[0-9a-f]{32}", post.header("Idempotency-Key"))
    assert posts[2].json()["adam_params"] == LR.model_dump()
    for record in front.seen():
        assert record.header("User-Agent") == f"loops-runner/{__version__}"
        assert record.header("X-Baseten-Accept-Error") == "1"
        assert record.header("Authorization") == "Api-Key k-123"
        assert record.header("X-Run-Id") == run_id
    assert {r.status for r in front.seen("GET", "/operations/")} == {200}


def test_futures_are_lazy_cached_and_awaitable(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        future = client.forward(batch(2))
        assert not future.done()
        first = future.result()
        polls = len(front.seen("GET", f"/operations/{future.operation_id}"))
        assert future.done() and future.result() is first
        assert asyncio.run(_await(future)) is first
        assert len(front.seen("GET", f"/operations/{future.operation_id}")) == polls == 1

        async def twins() -> tuple:
            fb = await client.forward_backward_async(batch(3))
            step = await client.optim_step_async(LR)
            fwd = await client.forward_async(batch(3))
            return await fb, await step, await fwd

        fb, step, fwd = asyncio.run(twins())
        assert fb.loss > 0 and step.metrics["step"] == 1 and len(fwd.loss_fn_outputs) == 2
        assert client.policy_version == 1
        reset = asyncio.run(_await_twice(client.init_trainer_server_async(8)))
        assert reset.lora_rank == 8 and client.policy_version == 0


async def _await(future):
    return await future


async def _await_twice(coroutine):
    return await (await coroutine)


def test_info_tokenizer_health_and_policy_version(trainer_server, run_id,
                                                  tiny_model_dir) -> None:
    # The client knows no local names: a caller talking to a trainer directly
    # names the model by its directory (the trainer serves "tiny" under both).
    with _client(trainer_server.url, run_id, max_seq_len=512,
                 base_model=str(tiny_model_dir)) as client:
        info = client.get_info()
        assert (info.model_name, info.lora_rank, info.is_lora, info.max_seq_len) == (
            str(tiny_model_dir), 8, True, 512)
        tokenizer = client.get_tokenizer()
        assert client.get_tokenizer() is tokenizer  # cached
        ids = tokenizer.encode("the cat sat on the mat")
        assert ids and all(0 <= i < 4096 for i in ids)
        client.health()
        assert client.policy_version == 0
        client.forward_backward([sft_datum(ids)])
        client.optim_step(LR).result()
        assert client.policy_version == 1


def test_custom_loss_through_the_linear_surrogate_equals_the_builtin(trainer_server,
                                                                     run_id) -> None:
    torch = pytest.importorskip("torch")
    data = batch(4, rows=3)
    weights = [torch.tensor(d.loss_fn_inputs["weights"].tolist()) for d in data]
    seen: list = []

    def weighted_nll(batch_data: list[Datum], logprobs: list) -> tuple:
        seen.append((len(batch_data), [lp.shape for lp in logprobs]))
        loss = -sum((lp * w).sum() for lp, w in zip(logprobs, weights, strict=True))
        return loss, {"custom_metric": 42.0}

    with _client(trainer_server.url, f"{run_id}-custom") as client:
        custom = client.forward_backward_custom(data, weighted_nll).result()
        client.optim_step(LR).result()
        custom_probe = probe(client)
    with _client(trainer_server.url, f"{run_id}-builtin") as client:
        builtin = client.forward_backward(
            data, "cross_entropy", {"skip_token_normalization": True}).result()
        client.optim_step(LR).result()
        builtin_probe = probe(client)

    assert seen == [(3, [torch.Size([d.model_input.length]) for d in data])]
    assert custom.metrics["custom_metric"] == 42.0
    assert custom.metrics["skip_token_normalization"] == 1.0
    assert custom.loss == pytest.approx(builtin.loss, rel=1e-6)
    assert_same_probe(custom_probe, builtin_probe, tol=1e-6)


def test_custom_loss_async_and_a_nonlinear_loss(trainer_server, run_id) -> None:
    torch = pytest.importorskip("torch")

    def squared(_: list[Datum], logprobs: list) -> tuple:
        return sum((lp ** 2).sum() for lp in logprobs) / 2, {"n": float(len(logprobs))}

    with _client(trainer_server.url, run_id) as client:
        before = probe(client)

        async def run() -> object:
            return await (await client.forward_backward_custom_async(batch(5), squared))

        result = asyncio.run(run())
        client.optim_step(AdamParams(learning_rate=1e-2)).result()
        after = probe(client)
    assert result.metrics["n"] == 2.0
    # Minimising Σ lp²/2 pushes logprobs towards 0: the probe's mean logprob rises.
    mean = lambda rows: sum(sum(r) for r in rows) / sum(len(r) for r in rows)  # noqa: E731
    assert mean(after) > mean(before)
    assert torch is not None


def test_an_oversized_request_is_chunked_and_merged_transparently(trainer_server, run_id,
                                                                  proxy) -> None:
    front = proxy(trainer_server.url)
    data = batch(6, rows=6, length=10)
    with _client(front.url, f"{run_id}-chunked") as client:
        client._max_request_bytes = 900  # two rows per request instead of 24 MiB
        chunked = client.forward_backward(data).result()
        client.optim_step(LR).result()
        chunked_probe = probe(client)
    bodies = [r.json() for r in front.seen("POST", "/forward_backward")]
    assert len(bodies) >= 3
    assert all(len(r.body) <= 900 for r in front.seen("POST", "/forward_backward"))
    assert sum(len(b["data"]) for b in bodies) == 6
    # The chunks of one call carry consecutive seq_ids.
    assert sorted(b["seq_id"] for b in bodies) == list(range(2, 2 + len(bodies)))

    with _client(trainer_server.url, f"{run_id}-whole") as client:
        whole = client.forward_backward(data).result()
        client.optim_step(LR).result()
        whole_probe = probe(client)
    assert len(chunked.loss_fn_outputs) == 6
    for a, b in zip(chunked.loss_fn_outputs, whole.loss_fn_outputs, strict=True):
        assert_same_probe([a["logprobs"].tolist()], [b["logprobs"].tolist()])
    # Token-normalised means differ per chunk; the merged loss is the row-weighted mean.
    assert chunked.loss == pytest.approx(whole.loss, rel=0.2)
    assert_same_probe(chunked_probe, whole_probe, tol=1e-5)


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_both_twins_cap_the_chunk_uploads_in_flight(trainer_server, run_id, proxy,
                                                    twin) -> None:
    front = proxy(trainer_server.url)
    hold = 0.6
    front.inject("/forward_backward", method="POST", delay=hold)
    data = batch(8, rows=12, length=10)
    with _client(front.url, f"{run_id}-{twin}") as client:
        client._max_request_bytes = 900  # two rows per request: six chunks
        if twin == "sync":
            result = client.forward_backward(data).result()
        else:
            async def submit() -> ForwardBackwardOutput:
                return await (await client.forward_backward_async(data)).result_async()
            result = asyncio.run(submit())
    arrivals = sorted(r.at for r in front.seen("POST", "/forward_backward"))
    assert len(arrivals) > CHUNK_UPLOADS and len(result.loss_fn_outputs) == 12
    # A held upload frees its slot only after ``hold``: no more than the cap
    # may arrive within less than that.
    most_in_flight = max(sum(1 for b in arrivals if a <= b < a + hold * 0.8) for a in arrivals)
    assert most_in_flight == CHUNK_UPLOADS


def test_dpo_pairs_stay_together_when_chunked(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    data = []
    for datum in batch(7, rows=6, length=10):
        n = datum.model_input.length
        data.append(datum.model_copy(update={"loss_fn_inputs": {
            **datum.loss_fn_inputs,
            "ref_logprobs": TensorData(data=[-1.0] * n, dtype="float32")}}))
    with _client(front.url, run_id) as client:
        client._max_request_bytes = 1900
        result = client.forward_backward(data, "dpo").result()
        with pytest.raises(ValueError, match="groups of 2"):
            client.forward_backward(data[:5], "dpo")
    bodies = [r.json() for r in front.seen("POST", "/forward_backward")]
    assert len(bodies) >= 2 and all(len(b["data"]) % 2 == 0 for b in bodies)
    assert len(result.loss_fn_outputs) == 6


def test_heartbeat_pings_health_until_closed(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    client = _client(front.url, run_id, heartbeat_interval=0.2)
    time.sleep(1.1)
    client.close()
    pings = front.seen("GET", "/health")
    assert len(pings) >= 3
    assert pings[0].path == "/health?base_model=tiny"
    assert pings[0].header("X-Run-Id") == run_id
    time.sleep(0.5)
    assert len(front.seen("GET", "/health")) == len(pings)
    with pytest.raises(UnsupportedOperationError, match="closed"):
        client.forward(batch(8))


def test_a_client_without_a_run_refuses_checkpoint_operations_locally(trainer_server,
                                                                       proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, None) as client:
        sent = len(front.seen("POST"))
        for call in (lambda: client.save_state("s"), lambda: client.load_state("bt://x"),
                     lambda: client.load_state_with_optimizer("bt://x"),
                     lambda: client.save_weights_for_sampler("w"),
                     lambda: client.save_weights_and_get_sampling_client("w"),
                     lambda: client.create_sampling_client("bt://loops:r/sampler_weights/w"),
                     client.list_checkpoints,
                     lambda: client.get_checkpoint_archive_url("ckpt-1"),
                     lambda: client.download_checkpoint("ckpt-1", dest_dir="/tmp/never")):
            with pytest.raises(UnsupportedOperationError):
                call()
        assert len(front.seen("POST")) == sent  # nothing reached the wire
        # Training itself works without a run (run_id null, no X-Run-Id).
        assert client.forward(batch(9)).result().loss > 0
    bodies = [r.json() for r in front.seen("POST")]
    assert all(body["run_id"] is None for body in bodies)
    assert all(r.header("X-Run-Id") is None for r in front.seen())


def test_a_seed_makes_the_fresh_adapter_reproducible(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    probes = []
    for suffix, seed in (("a", 5), ("b", 5), ("c", 6)):
        with _client(front.url, f"{run_id}-{suffix}", seed=seed) as client:
            # A fresh LoRA adapter is the identity; one step shows its init.
            client.forward_backward(batch(1)).result()
            client.optim_step(LR).result()
            probes.append(probe(client))
    assert_same_probe(probes[0], probes[1])
    assert probes[0] != probes[2]
    inits = [r.json() for r in front.seen("POST", "/init_trainer_server")]
    assert [body["seed"] for body in inits] == [5, 5, 6]
