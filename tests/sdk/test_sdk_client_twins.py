"""The clients' native async twins behave like their plain methods: one table, both twins run it.

Each case makes the real trainer or sampler (behind a fault proxy) answer a
certain way, calls one client method and says what the caller must see and
what went over the wire. ``call`` runs it through the plain method (then
``.result()``) or through its ``*_async`` twin (then ``await .result_async()``),
so a decision that differs between the two fails here. The retry loop and the
chunk uploads have tables of their own (test_sdk_twins.py); twins that only run
their plain method in a thread are generated from it (``sdk.twins``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from loops_runner.sdk import (
    ModelInput,
    RequestRejectedError,
    SampleTimeoutError,
    SamplingClient,
    SamplingParams,
    ServerShutdownError,
    TrainingClient,
    UnknownRequestError,
)
from loops_runner.sdk.deployments import SamplerEndpoint
from tests.sdk.helpers import LR, batch
from tests.sdk.queue_adapter import QueueAdapter

TWINS = ["sync", "async"]


def call(twin: str, client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``client.method(...)`` through the plain method or its async twin, waited for."""
    if twin == "sync":
        out = getattr(client, method)(*args, **kwargs)
        return out.result() if hasattr(out, "result_async") else out

    async def run() -> Any:
        out = await getattr(client, f"{method}_async")(*args, **kwargs)
        return await out.result_async() if hasattr(out, "result_async") else out

    return asyncio.run(run())


def run_case(case: Case, twin: str, client: Any, front: Any) -> Any:
    """Inject the case's faults, then make its call; the result, or None once it raised."""
    for fault in case.faults:
        front.inject(**fault)
    if case.raises is None:
        return call(twin, client, case.method, *case.args, **case.kwargs)
    with pytest.raises(case.raises):
        call(twin, client, case.method, *case.args, **case.kwargs)
    return None


def custom_loss(data: Any, logprobs: Any) -> Any:
    return -sum(lp.sum() for lp in logprobs), {"custom_twin_metric": 1.0}


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    faults: tuple[dict[str, Any], ...] = ()  # FaultProxy.inject keyword arguments
    raises: type[Exception] | None = None
    # (method, path): how many requests; a path ending in "/" is a prefix
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    one_key: str | None = None  # every POST to this path carries one idempotency key
    client: dict[str, Any] = field(default_factory=dict)  # client constructor options


TRAINER_CASES = [
    Case("accepted and answered", "forward_backward", (batch(1),),
         requests={("POST", "/forward_backward"): 1}),
    Case("502 on submit is retried with one key", "forward_backward", (batch(2),),
         faults=({"path_prefix": "/forward_backward", "method": "POST", "status": 502,
                  "times": 2},),
         requests={("POST", "/forward_backward"): 3}, one_key="/forward_backward"),
    Case("a 422 fails at once", "forward_backward", (batch(3),),
         {"loss_fn_config": {"not_a_knob": 1.0}}, raises=RequestRejectedError,
         requests={("POST", "/forward_backward"): 1}),
    Case("503 on submit is a shutdown", "optim_step", (LR,),
         faults=({"path_prefix": "/optim_step", "method": "POST", "status": 503, "times": 5},),
         raises=ServerShutdownError, requests={("POST", "/optim_step"): 1}),
    Case("404 on poll is an unknown operation", "forward", (batch(4),),
         faults=({"path_prefix": "/operations/", "method": "GET", "status": 404,
                  "times": 1},),
         raises=UnknownRequestError, requests={("GET", "/operations/"): 1}),
    Case("408 on poll is polled again", "forward", (batch(5),),
         faults=({"path_prefix": "/operations/", "method": "GET", "status": 408,
                  "times": 3},),
         requests={("GET", "/operations/"): 4}),
    Case("503 on poll is a shutdown", "forward", (batch(6),),
         faults=({"path_prefix": "/operations/", "method": "GET", "status": 503,
                  "times": 1},),
         raises=ServerShutdownError),
    Case("a custom loss is a forward, then a forward_backward", "forward_backward_custom",
         (batch(7), custom_loss),
         requests={("POST", "/forward"): 1, ("POST", "/forward_backward"): 1}),
    Case("save_state names its checkpoint", "save_state", ("twins",),
         requests={("POST", "/save_state"): 1}),
]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("case", TRAINER_CASES, ids=[case.name for case in TRAINER_CASES])
def test_the_training_twins_behave_alike(case: Case, twin: str, trainer_server, run_id,
                                         proxy) -> None:
    front = proxy(trainer_server.url)
    with TrainingClient(front.url, lora_rank=4, base_model="tiny", run_id=f"{run_id}-{twin}",
                        ready_timeout=60, **case.client) as client:
        front.clear()
        result = run_case(case, twin, client, front)
        if case.raises is None:
            _check_training_result(case, result, f"{run_id}-{twin}")
    _check_requests(case, front)


def _check_training_result(case: Case, result: Any, run_id: str) -> None:
    if case.method == "save_state":
        assert result.path == f"bt://loops:{run_id}/weights/twins"
    elif case.method == "optim_step":
        assert "grad_norm" in result.metrics
    elif case.method == "forward_backward_custom":
        assert result.metrics["custom_twin_metric"] == 1.0
        assert len(result.loss_fn_outputs) == 2
    else:
        assert result.loss > 0 and len(result.loss_fn_outputs) == 2


PROMPT = ModelInput.from_ints([11, 12, 13, 14])
PARAMS = SamplingParams(max_tokens=3, seed=1)

SAMPLER_CASES = [
    Case("two samples", "sample", (PROMPT, 2), {"sampling_params": PARAMS},
         requests={("POST", "/sample"): 1}),
    Case("502 is retried with one key", "sample", (PROMPT,), {"sampling_params": PARAMS},
         faults=({"path_prefix": "/sample", "method": "POST", "status": 502, "times": 2},),
         requests={("POST", "/sample"): 3}, one_key="/sample"),
    Case("an invalid request fails at once", "sample", (ModelInput.from_ints([1, 999_999]),),
         {"sampling_params": PARAMS}, raises=RequestRejectedError,
         requests={("POST", "/sample"): 1}),
    Case("a held answer is a timeout, not a resend", "sample", (PROMPT,),
         {"sampling_params": PARAMS},
         faults=({"path_prefix": "/sample", "method": "POST", "delay": 3.0, "times": 1},),
         raises=SampleTimeoutError, requests={("POST", "/sample"): 1},
         client={"timeout": 1.0}),
    Case("prompt logprobs", "compute_logprobs", (PROMPT,), requests={("POST", "/sample"): 1}),
]


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("case", SAMPLER_CASES, ids=[case.name for case in SAMPLER_CASES])
def test_the_sampling_twins_behave_alike(case: Case, twin: str, sampler_server,
                                         proxy) -> None:
    front = proxy(sampler_server.url)
    client = SamplingClient(base_model="tiny", endpoint=front.url, ready_timeout=60,
                            **case.client)
    result = run_case(case, twin, client, front)
    if case.raises is None:
        if case.method == "compute_logprobs":
            assert len(result) == PROMPT.length and result[0] is None
            assert all(isinstance(value, float) for value in result[1:])
        else:
            expected = case.args[1] if len(case.args) > 1 else 1
            assert len(result.sequences) == expected
            assert all(len(s.tokens) >= 1 for s in result.sequences)
    client.close()
    _check_requests(case, front)


@pytest.mark.parametrize("twin", TWINS)
def test_the_queued_sampling_twins_cancel_alike(twin: str, sampler_server) -> None:
    """A queued (serverless) sample past the client's timeout is cancelled, by either twin."""
    queue = QueueAdapter(sampler_server.url)
    try:
        client = SamplingClient(
            base_model="tiny", endpoint=SamplerEndpoint(queue.url, "serverless",
                                                        sampler_id="smp-queued"),
            ready_timeout=30, timeout=1.0)
        queue.delay = 3.0
        with pytest.raises(SampleTimeoutError):
            call(twin, client, "sample", PROMPT, sampling_params=PARAMS)
        assert len(queue.cancelled) == 1 and len(queue.submits) == 1
    finally:
        queue.close()


def _seen(front: Any, method: str, path: str) -> list[Any]:
    """Requests to ``path`` (a prefix when it ends with ``/``, else exactly that path)."""
    return [r for r in front.seen(method, path)
            if path.endswith("/") or r.path.split("?")[0] == path]


def _check_requests(case: Case, front: Any) -> None:
    for (method, path), count in case.requests.items():
        assert len(_seen(front, method, path)) == count, (method, path)
    if case.one_key is not None:
        keys = {r.header("Idempotency-Key") for r in _seen(front, "POST", case.one_key)}
        assert len(keys) == 1
