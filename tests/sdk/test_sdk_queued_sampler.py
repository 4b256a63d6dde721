"""The queued (serverless) sampler path of spec 6.6, against the real sampler behind a queue.

Baseten's serverless samplers queue ``/sample`` (202 + polling); the local
stack serves dedicated samplers only, so ``QueueAdapter`` puts the queue in
front of the real sampler.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from loops_runner.sdk import (
    ModelInput,
    SampleTimeoutError,
    SamplingClient,
    SamplingParams,
    TrainingClient,
)
from loops_runner.sdk.deployments import SamplerEndpoint
from tests.sdk.helpers import LR, batch
from tests.sdk.queue_adapter import QueueAdapter

PROMPT = ModelInput.from_ints([51, 52, 53, 54])
PARAMS = SamplingParams(max_tokens=4, seed=9, temperature=0.9)


@pytest.fixture
def queue(sampler_server):
    adapter = QueueAdapter(sampler_server.url)
    yield adapter
    adapter.close()


def _queued(queue: QueueAdapter, **kwargs) -> SamplingClient:
    endpoint = SamplerEndpoint(queue.url, "serverless", sampler_id="smp-queued")
    return SamplingClient(base_model="tiny", endpoint=endpoint, ready_timeout=30, **kwargs)


def test_a_queued_sample_equals_the_direct_one(queue, sampler_server) -> None:
    direct = SamplingClient(base_model="tiny", endpoint=sampler_server.url).sample(
        PROMPT, sampling_params=PARAMS)
    client = _queued(queue, min_policy_version=3)
    queue.retry_after_polls = 1
    started = time.monotonic()
    result = client.sample(PROMPT, sampling_params=PARAMS)
    assert time.monotonic() - started >= 0.9  # the poll's Retry-After was honoured
    assert result.sequences[0].tokens == direct.sequences[0].tokens
    assert result.policy_version is None  # a queued result carries no response headers
    headers, body = queue.submits[0]
    assert body["model"] == "tiny" and "lora" not in body
    assert headers["x-sampler-id"] == "smp-queued"
    assert "x-min-policy-version" not in headers  # serverless clients never send floors
    assert asyncio.run(client.sample_async(PROMPT, sampling_params=PARAMS)).sequences[0].tokens \
        == direct.sequences[0].tokens


def test_a_queued_sample_past_its_timeout_is_cancelled(queue) -> None:
    client = _queued(queue, timeout=1.0)
    queue.delay = 3.0
    started = time.monotonic()
    with pytest.raises(SampleTimeoutError):
        client.sample(PROMPT, sampling_params=PARAMS)
    assert time.monotonic() - started < 2.9  # before the queued job even started
    assert len(queue.cancelled) == 1 and len(queue.submits) == 1


def test_publishing_to_a_serverless_sampler_pins_a_unique_checkpoint(trainer_server, queue,
                                                                     run_id) -> None:
    endpoint = SamplerEndpoint(queue.url, "serverless", sampler_id="smp-queued")
    with TrainingClient(trainer_server.url, lora_rank=4, base_model="tiny", run_id=run_id,
                        paired_sampling_deployment=endpoint) as client:
        client.forward_backward(batch(1)).result()
        client.optim_step(LR).result()
        sampling = client.save_weights_and_get_sampling_client("rollout")
    assert re.fullmatch(rf"bt://loops:{run_id}/sampler_weights/rollout-[0-9a-f]{{32}}",
                        sampling.checkpoint_path)
    assert sampling.min_policy_version is None
    result = sampling.sample(PROMPT, sampling_params=PARAMS)
    assert len(result.sequences[0].tokens) >= 1
    headers, body = queue.submits[-1]
    assert body["lora"] == sampling.checkpoint_path
    assert headers["x-checkpoint-path"] == sampling.checkpoint_path
    assert headers["x-run-id"] == run_id and "x-sampler-id" not in headers
