"""Fault behaviour of the client against real servers behind a fault-injecting proxy.

The retry matrix of spec 2.3-2.4: "not ready" answers are retried with the
same idempotency key, permanent refusals fail at once with the server's own
message, poll answers are read exactly (408 re-poll, 404 unknown, 503
shutdown), and a dead trainer is an error within the client's budgets, not a
hang.
"""

from __future__ import annotations

import itertools
import time

import pytest

from loops_runner.sdk import (
    ModelInput,
    OperationTimeoutError,
    RequestRejectedError,
    SampleTimeoutError,
    SamplingClient,
    SamplingParams,
    ServerShutdownError,
    ServerUnavailableError,
    TrainingClient,
    UnknownRequestError,
)
from tests.sdk.helpers import LR, batch
from tests.servers import start_server


def _client(url: str, run_id: str, **kwargs) -> TrainingClient:
    kwargs.setdefault("ready_timeout", 60)
    return TrainingClient(url, lora_rank=4, base_model="tiny", run_id=run_id, **kwargs)


# -- trainer submits -------------------------------------------------------------


def test_a_trainer_answering_502_for_a_few_seconds_is_retried(trainer_server, run_id,
                                                             proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        front.inject("/forward_backward", method="POST", status=502,
                     body={"detail": "upstream starting"}, seconds=2.0)
        started = time.monotonic()
        result = client.forward_backward(batch(1)).result()
        elapsed = time.monotonic() - started
    attempts = front.seen("POST", "/forward_backward")
    assert result.loss > 0 and len(result.loss_fn_outputs) == 2
    assert len(attempts) >= 2 and elapsed >= 1.9
    assert [a.status for a in attempts][-1] == 202
    assert all(a.status == 502 for a in attempts[:-1])
    # Every retry of the one submit reuses its idempotency key.
    keys = {a.header("Idempotency-Key") for a in attempts}
    assert len(keys) == 1 and len(keys.pop()) == 32


def test_a_422_fails_at_once_with_the_servers_message(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        started = time.monotonic()
        with pytest.raises(RequestRejectedError) as caught:
            client.forward_backward(batch(2), loss_fn_config={"not_a_knob": 1.0})
        elapsed = time.monotonic() - started
        # The refused request changed nothing: the client goes on working.
        assert client.forward_backward(batch(2)).result().loss > 0
    assert elapsed < 1.0
    error = caught.value
    assert error.status_code == 422 and "not_a_knob" in str(error)
    assert error.run_id == run_id and error.operation == "forward_backward"
    assert len([a for a in front.seen("POST", "/forward_backward") if a.status == 422]) == 1


def test_503_on_submit_is_a_shutdown_and_not_retried(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        front.inject("/optim_step", method="POST", status=503, times=5)
        with pytest.raises(ServerShutdownError, match="optim_step"):
            client.optim_step(LR)
    assert len(front.seen("POST", "/optim_step")) == 1


def test_a_gateway_rejection_is_final_even_with_a_retryable_status(trainer_server, run_id,
                                                                   proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        front.inject("/forward", method="POST", status=404, times=5,
                     body={"detail": "no such run"},
                     headers={"X-Baseten-Error-Source": "06",
                              "X-Baseten-Error-Code": "run_or_sampler_required"})
        with pytest.raises(RequestRejectedError, match="Loops gateway: run_or_sampler"):
            client.forward(batch(3))
    assert len(front.seen("POST", "/forward")) == 1  # one attempt: no retry, no backoff


# -- polls -----------------------------------------------------------------------


def test_404_on_poll_raises_unknown_request_and_is_remembered(trainer_server, run_id,
                                                              proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        future = client.forward_backward(batch(4))
        front.inject("/operations/", method="GET", status=404,
                     body={"detail": "unknown operation"}, times=1)
        with pytest.raises(UnknownRequestError) as caught:
            future.result()
        polls = len(front.seen("GET", "/operations/"))
        with pytest.raises(UnknownRequestError):
            future.result()  # replayed from the cache: no new poll
        assert len(front.seen("GET", "/operations/")) == polls
        assert future.done()
    assert caught.value.operation_id == future.operation_id
    assert caught.value.run_id == run_id


def test_408_is_repolled_at_once_and_502_after_a_pause(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        future = client.forward(batch(5))
        front.inject("/operations/", method="GET", status=408, times=6)
        assert future.result().loss > 0
        polls = front.seen("GET", f"/operations/{future.operation_id}")
        assert [p.status for p in polls] == [408] * 6 + [200]
        gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
        assert max(gaps) < 0.5  # no backoff between 408s

        future = client.forward(batch(6))
        front.inject("/operations/", method="GET", status=502, times=1)
        assert future.result().loss > 0
        polls = front.seen("GET", f"/operations/{future.operation_id}")
        assert [p.status for p in polls][:2] == [502, 200]
        assert polls[1].at - polls[0].at >= 1.9  # a 502 is re-polled after 2 s


def test_503_on_poll_is_a_shutdown(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        future = client.forward(batch(7))
        front.inject("/operations/", method="GET", status=503, times=1)
        with pytest.raises(ServerShutdownError):
            future.result()


def test_a_result_timeout_is_not_final(trainer_server, run_id, proxy) -> None:
    front = proxy(trainer_server.url)
    with _client(front.url, run_id) as client:
        future = client.forward(batch(8))
        front.inject("/operations/", method="GET", delay=2.0, times=1)
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError):
            future.result(timeout=0.5)
        assert time.monotonic() - started < 1.9  # gave up before the held poll answered
        assert not future.done()
        assert future.result().loss > 0  # waiting again gets the outcome


# -- a dead trainer ------------------------------------------------------------------


@pytest.fixture
def doomed_trainer(loops_home):
    """A trainer of its own, to be killed by the test."""
    server = start_server(["trainer", "--base-model", "tiny"], loops_home,
                          "trainer-sdk-doomed.log", health_path="/health?base_model=tiny")
    yield server
    server.stop()


def test_a_killed_trainer_surfaces_an_error_within_the_budgets(doomed_trainer, run_id) -> None:
    timeout, ready_timeout = 3.0, 4.0
    client = _client(doomed_trainer.url, run_id, timeout=timeout)
    client.forward_backward(batch(9)).result()
    future = client.forward_backward(batch(10))
    doomed_trainer.process.kill()
    doomed_trainer.process.wait(10)

    started = time.monotonic()
    with pytest.raises(ServerUnavailableError) as caught:
        future.result()
    # Polls tolerate lost connections for at most `timeout` seconds.
    assert time.monotonic() - started < timeout + 3.0
    assert caught.value.operation == "forward_backward" and caught.value.run_id == run_id
    client.close()

    # Submits retry refused connections (a trainer still starting) for `ready_timeout`.
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="could not reach"):
        _client(doomed_trainer.url, f"{run_id}-new", timeout=timeout,
                ready_timeout=ready_timeout)
    assert ready_timeout - 0.5 <= time.monotonic() - started < ready_timeout + 3.0


# -- sampler -------------------------------------------------------------------------

PROMPT = ModelInput.from_ints([11, 12, 13, 14])


def _sampler(url: str, **kwargs) -> SamplingClient:
    kwargs.setdefault("ready_timeout", 60)
    return SamplingClient(base_model="tiny", endpoint=url, **kwargs)


def test_a_sampler_answering_502_then_503_is_retried(sampler_server, proxy) -> None:
    front = proxy(sampler_server.url)
    client = _sampler(front.url)
    front.inject("/sample", method="POST", status=502, seconds=1.5)
    front.inject("/sample", method="POST", status=503, times=1)
    result = client.sample(PROMPT, sampling_params=SamplingParams(max_tokens=3, seed=1))
    attempts = front.seen("POST", "/sample")
    assert len(result.sequences[0].tokens) >= 1
    assert len(attempts) >= 3 and attempts[-1].status == 200
    assert len({a.header("Idempotency-Key") for a in attempts}) == 1


def test_an_invalid_sample_request_fails_at_once(sampler_server, proxy) -> None:
    front = proxy(sampler_server.url)
    client = _sampler(front.url)
    with pytest.raises(RequestRejectedError) as caught:
        client.sample(ModelInput.from_ints([1, 999_999]),
                      sampling_params=SamplingParams(max_tokens=2))
    assert caught.value.status_code in (400, 422) and "999999" in str(caught.value)
    assert len(front.seen("POST", "/sample")) == 1


def test_a_slow_sample_is_a_sample_timeout_not_a_retry(sampler_server, proxy) -> None:
    front = proxy(sampler_server.url)
    client = _sampler(front.url, timeout=1.0)
    front.inject("/sample", method="POST", delay=3.0, times=1)
    started = time.monotonic()
    with pytest.raises(SampleTimeoutError):
        client.sample(PROMPT, sampling_params=SamplingParams(max_tokens=2))
    assert time.monotonic() - started < 2.9  # gave up before the held answer came
    assert len(front.seen("POST", "/sample")) == 1
