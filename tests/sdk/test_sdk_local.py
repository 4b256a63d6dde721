"""``ServiceClient.local(...)``: the whole public surface against a running trainer and sampler.

Local mode has no control plane and no run (spec 8): training and sampling
work; saving, loading, publishing and the checkpoint registry are refused
client-side, before anything reaches the wire.
"""

from __future__ import annotations

import asyncio
import pickle
import re

import pytest

from loops_runner.sdk import (
    AdamParams,
    ModelInput,
    SamplingClient,
    SamplingParams,
    ServiceClient,
    UnsupportedOperationError,
)
from tests.sdk.helpers import LR, batch, sft_datum


def test_local_session_trains_and_samples_without_run_or_auth(trainer_server, sampler_server,
                                                             proxy, monkeypatch) -> None:
    monkeypatch.setenv("BASETEN_API_KEY", "must-not-be-sent")
    trainer, sampler = proxy(trainer_server.url), proxy(sampler_server.url)
    service = ServiceClient.local(trainer_url=trainer.url, sampler_url=sampler.url)
    assert service.session_id == "local"
    with service.create_lora_training_client("tiny", rank=4, seed=3) as client:
        assert client.run_id is None
        client.forward_backward(batch(1)).result()
        client.optim_step(LR).result()
        assert client.policy_version == 1
        sampling = service.create_sampling_client("tiny")
        result = sampling.sample(ModelInput.from_ints([20, 21, 22]),
                                 sampling_params=SamplingParams(max_tokens=3, seed=0))
        assert len(result.sequences[0].tokens) == 3
    for record in trainer.seen() + sampler.seen():
        assert record.header("Authorization") is None
        assert record.header("X-Run-Id") is None
        assert record.header("X-Min-Policy-Version") is None
    bodies = [r.json() for r in trainer.seen("POST")]
    assert bodies[0]["seq_id"] == 1 and all(body["run_id"] is None for body in bodies)
    sample = sampler.seen("POST", "/sample")[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        sample.header("Idempotency-Key"))
    assert "model" not in sample.json()  # only queued samplers get the model name


def test_local_mode_refuses_what_needs_a_run_or_a_control_plane(local_service, proxy,
                                                                trainer_server) -> None:
    front = proxy(trainer_server.url)
    service = ServiceClient.local(trainer_url=front.url,
                                  sampler_url=local_service.create_sampling_client(
                                      "tiny").base_url)
    client = service.create_lora_training_client("tiny", rank=4)
    sent = len(front.seen("POST"))
    refused = [
        lambda: client.save_state("s"),
        lambda: client.load_state("bt://loops:r/weights/s"),
        lambda: client.load_state_with_optimizer("bt://loops:r/weights/s"),
        lambda: client.save_weights_for_sampler("w"),
        lambda: client.save_weights_and_get_sampling_client(),
        lambda: asyncio.run(client.save_weights_and_get_sampling_client_async()),
        lambda: asyncio.run(client.save_state_async("s")),
        lambda: client.create_sampling_client("bt://loops:r/sampler_weights/w"),
        client.list_checkpoints,
        lambda: client.get_checkpoint_archive_url("ckpt-x"),
        lambda: client.download_checkpoint("ckpt-x", dest_dir="/tmp/never-written"),
        service.get_server_capabilities,
        lambda: asyncio.run(service.get_server_capabilities_async()),
        lambda: service.list_checkpoints("r"),
        lambda: service.get_checkpoint_archive_url("ckpt-x"),
        lambda: service.download_checkpoint("ckpt-x", dest_dir="/tmp/never-written"),
        lambda: service.create_training_client_from_state("bt://loops:r/weights/s"),
        lambda: service.create_training_client_from_state_with_optimizer(
            "bt://loops:r/weights/s"),
        lambda: asyncio.run(service.create_training_client_from_state_async(
            "bt://loops:r/weights/s")),
        lambda: asyncio.run(service.create_training_client_from_state_with_optimizer_async(
            "bt://loops:r/weights/s")),
        lambda: asyncio.run(service.list_checkpoints_async("r")),
        lambda: asyncio.run(service.download_checkpoint_async("c", dest_dir="/tmp/never")),
        lambda: asyncio.run(client.create_sampling_client_async("bt://loops:r/w")),
        lambda: asyncio.run(client.load_state_async("bt://loops:r/weights/s")),
    ]
    for call in refused:
        with pytest.raises(UnsupportedOperationError):
            call()
    with pytest.raises(ValueError, match="model_path"):
        service.create_sampling_client("tiny", model_path="bt://loops:r/sampler_weights/w")
    with pytest.raises(ValueError, match="model_path needs a control plane"):
        service.create_sampling_client(model_path="bt://loops:r/sampler_weights/w")
    assert len(front.seen("POST")) == sent
    client.close()


def test_local_training_surface(local_service, tiny_model_dir) -> None:
    torch = pytest.importorskip("torch")
    # Without a control plane nothing resolves local names: the caller passes the directory.
    client = asyncio.run(local_service.create_lora_training_client_async(
        str(tiny_model_dir), rank=4, timeout=120, ready_timeout=120))
    info = client.get_info()
    assert info.model_name == str(tiny_model_dir) and info.lora_rank == 4
    tokenizer = client.get_tokenizer()
    datum = sft_datum(tokenizer.encode("local mode trains too"))
    forward = client.forward([datum]).result()
    assert forward.loss_fn_outputs[0]["logprobs"].numel == datum.model_input.length

    def nll(_, logprobs):
        return -sum(lp.sum() for lp in logprobs), {"rows": float(len(logprobs))}

    custom = client.forward_backward_custom([datum], nll).result()
    assert custom.metrics["rows"] == 1.0
    step = client.optim_step(AdamParams(learning_rate=1e-2)).result()
    assert step.metrics["step"] == 1.0

    async def twins():
        fb = await client.forward_backward_async([datum])
        opt = await client.optim_step_async(LR)
        fc = await client.forward_backward_custom_async([datum], nll)
        return (await fb).loss, (await opt).metrics["step"], (await fc).metrics["rows"]

    loss, version, rows = asyncio.run(twins())
    assert loss < forward.loss and version == 2.0 and rows == 1.0
    assert client.policy_version == 2
    client.close()
    assert torch is not None


def test_local_sampling_surface(local_service, tiny_model_dir) -> None:
    sampling = asyncio.run(local_service.create_sampling_client_async(
        str(tiny_model_dir), timeout=60, ready_timeout=60))
    assert sampling.get_base_model() == str(tiny_model_dir)
    assert sampling.discover_base_model_name()  # the sampler's own name, from /v1/models
    sampling.ensure_ready()  # no deployment to wait for in local mode
    tokenizer = sampling.get_tokenizer()
    prompt = ModelInput.from_ints(tokenizer.encode("once upon a time"))
    params = SamplingParams(max_tokens=6, seed=11, temperature=0.8)
    first = sampling.sample(prompt, num_samples=2, sampling_params=params,
                            include_prompt_logprobs=True, topk_prompt_logprobs=2)
    again = sampling.sample(prompt, num_samples=2, sampling_params=params)
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    assert all(len(s.tokens) == len(s.logprobs) <= 6 for s in first.sequences)
    assert first.policy_version == 0
    assert first.prompt_logprobs[0] is None and len(first.prompt_logprobs) == prompt.length
    assert all(len(entry) >= 2 for entry in first.topk_prompt_logprobs[1:])

    scores = sampling.compute_logprobs(prompt)
    assert scores[0] is None and len(scores) == prompt.length
    assert scores[1:] == pytest.approx(first.prompt_logprobs[1:], abs=1e-5)

    async def fan_out():
        results = await asyncio.gather(*(
            sampling.sample_async(prompt, sampling_params=SamplingParams(max_tokens=4, seed=i))
            for i in range(6)))
        return results, await sampling.compute_logprobs_async(prompt)

    results, async_scores = asyncio.run(fan_out())
    assert len(results) == 6 and all(len(r.sequences) == 1 for r in results)
    assert async_scores == pytest.approx(scores, abs=1e-6)

    # A sampling client pickles (e.g. for rollout worker processes) and still works.
    clone: SamplingClient = pickle.loads(pickle.dumps(sampling))
    assert clone.sample(prompt, sampling_params=params).sequences[0].tokens \
        == first.sequences[0].tokens
    with sampling:
        pass


def test_sampler_scores_match_the_fresh_adapter(local_service) -> None:
    """A fresh LoRA adapter is the identity: trainer and sampler agree on logprobs."""
    client = local_service.create_lora_training_client("tiny", rank=4)
    sampling = local_service.create_sampling_client("tiny")
    tokens = [31, 32, 33, 34, 35, 36, 37]
    forward = client.forward([sft_datum(tokens)]).result()
    scores = sampling.compute_logprobs(ModelInput.from_ints(tokens))
    assert scores[1:] == pytest.approx(forward.loss_fn_outputs[0]["logprobs"].tolist(),
                                       abs=1e-4)
    client.close()
