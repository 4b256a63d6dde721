"""Pure parts of the client: chunking, merging, sample bodies and answers, errors, order.

No servers here: these functions take bytes and dicts. Everything that talks
HTTP is tested against real servers in the other files.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from loops_runner.sdk import chunking
from loops_runner.sdk.completions import parse_completions, sample_body
from loops_runner.sdk.errors import RequestRejectedError, is_final
from loops_runner.sdk.http import error_detail, is_permanent_rejection, rejection
from loops_runner.sdk.ordering import Turnstile
from loops_runner.sdk.retry import QUEUED_SAMPLE, SAMPLE, SUBMIT
from loops_runner.wire import (
    Datum,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInput,
    SamplingParams,
    TensorData,
)


def _datum(n: int, start: int = 5) -> Datum:
    tokens = list(range(start, start + n + 1))
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]),
                 loss_fn_inputs={"target_tokens": TensorData(data=tokens[1:], dtype="int64")})


# -- chunking ---------------------------------------------------------------------


def test_body_template_renders_exactly_the_compact_json_of_the_whole_body() -> None:
    data = [_datum(3), _datum(4, 50)]
    fields = {"loss_fn": "cross_entropy", "loss_fn_config": None, "seq_id": 7, "run_id": "r"}
    template = chunking.BodyTemplate.build(fields)
    rendered = template.render(chunking.encode_data(data))
    expected = {"data": [d.model_dump(mode="json") for d in data], **fields}
    assert json.loads(rendered) == expected
    assert len(rendered) == len(json.dumps(expected, separators=(",", ":")).encode())


def test_plan_chunks_packs_greedily_and_every_chunk_fits() -> None:
    sizes = [40, 40, 40, 40, 40]
    overhead = 20
    chunks = chunking.plan_chunks(sizes, overhead=overhead, cap=150)
    # 20 + 40 + 1 + 40 + 1 + 40 = 142 fits; a fourth would not.
    assert chunks == [range(0, 3), range(3, 5)]
    for chunk in chunks:
        body = overhead + sum(sizes[i] for i in chunk) + len(chunk) - 1
        assert body <= 150


def test_plan_chunks_keeps_a_body_that_fits_in_one_piece() -> None:
    assert chunking.plan_chunks([10, 10], overhead=5, cap=26) == [range(0, 2)]
    assert chunking.plan_chunks([10, 10], overhead=5, cap=25) == [range(0, 1), range(1, 2)]
    assert chunking.plan_chunks([], overhead=5, cap=25) == [range(0, 0)]


def test_dpo_pairs_are_never_split_and_odd_counts_refused() -> None:
    sizes = [30, 30, 30, 30, 30, 30]
    chunks = chunking.plan_chunks(sizes, overhead=10, cap=110, group_size=2)
    assert chunks == [range(0, 2), range(2, 4), range(4, 6)]
    assert all(len(chunk) % 2 == 0 for chunk in chunks)
    with pytest.raises(ValueError, match="groups of 2"):
        chunking.plan_chunks(sizes[:5], overhead=10, cap=110, group_size=2)


def test_a_datum_that_alone_exceeds_the_cap_is_refused_with_its_index() -> None:
    with pytest.raises(ValueError, match=r"datum\[1\].*exceeds the 100-byte"):
        chunking.plan_chunks([10, 200, 10], overhead=10, cap=100)
    with pytest.raises(ValueError, match=r"rows 2\.\.3"):
        chunking.plan_chunks([10, 10, 60, 60], overhead=10, cap=100, group_size=2)


def test_merge_outputs_concatenates_and_weights_by_rows() -> None:
    def out(loss: float, n: int, **metrics: float) -> ForwardBackwardOutput:
        return ForwardBackwardOutput(
            loss=loss, metrics={"loss": loss, **metrics},
            loss_fn_outputs=[{"logprobs": TensorData(data=[float(i)], dtype="float32")}
                             for i in range(n)])

    merged = chunking.merge_outputs(
        [out(1.0, 1, skip_token_normalization=1.0, extra=2.0),
         out(4.0, 3, skip_token_normalization=1.0)], [1, 3])
    assert merged.loss == pytest.approx(0.25 * 1.0 + 0.75 * 4.0)
    assert merged.metrics["loss"] == pytest.approx(3.25)
    assert merged.metrics["skip_token_normalization"] == 1.0
    assert merged.metrics["extra"] == 2.0  # only one chunk had it: its own value
    assert len(merged.loss_fn_outputs) == 4
    partial = chunking.merge_outputs(
        [out(1.0, 1, skip_token_normalization=1.0), out(1.0, 1)], [1, 1])
    assert partial.metrics["skip_token_normalization"] == 0.0


# -- sample bodies and answers ----------------------------------------------------


def test_sample_body_follows_spec_6_1() -> None:
    prompt = ModelInput.from_ints([1, 2, 3])
    body, ids = sample_body(prompt, 2, SamplingParams(max_tokens=5, seed=3, stop=[7, 8],
                                                       top_k=-1), True, 2)
    assert ids == [1, 2, 3]
    assert body == {"prompt": [1, 2, 3], "n": 2, "temperature": 1.0, "top_p": 1.0,
                    "logprobs": 0, "return_tokens_as_token_ids": True, "prompt_logprobs": 2,
                    "max_tokens": 5, "seed": 3, "stop_token_ids": [7, 8]}
    body, _ = sample_body(prompt, 1, SamplingParams(stop=["\n"], top_k=4), False, 0)
    assert body["stop"] == ["\n"] and body["top_k"] == 4
    assert "prompt_logprobs" not in body and "max_tokens" not in body
    with pytest.raises(ValueError, match="topk_prompt_logprobs"):
        sample_body(prompt, 1, SamplingParams(), True, 21)


def test_image_prompts_travel_as_chunks() -> None:
    prompt = ModelInput(chunks=[ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4)])
    body, ids = sample_body(prompt.append_int(9), 1, SamplingParams(), False, 0)
    assert ids == [] and body["prompt"] == []
    assert body["return_token_ids"] is True
    assert body["model_input_chunks"][0]["data"] == "iVBORw=="


def test_parse_completions_reads_tokens_logprobs_and_prompt_logprobs() -> None:
    payload = {"choices": [
        {"index": 0, "text": " hi", "finish_reason": "stop",
         "logprobs": {"tokens": ["token_id:11", "token_id:12"], "token_logprobs": [-0.5, -1.0]},
         "prompt_token_ids": [1, 2],
         "prompt_logprobs": [None, {"2": {"logprob": -2.0, "rank": 3},
                                    "9": {"logprob": -0.1, "rank": 1}}]},
        {"index": 1, "token_ids": [13], "logprobs": {"tokens": [13], "token_logprobs": [-3.0]}},
    ]}
    result = parse_completions(payload, policy_version="4", prompt_ids=[1, 2], include_topk=True)
    assert result.policy_version == 4
    assert [s.tokens for s in result.sequences] == [[11, 12], [13]]
    assert result.sequences[0].logprobs == [-0.5, -1.0]
    assert result.sequences[0].stop_reason == "stop"
    assert result.sequences[1].stop_reason == "length"  # missing -> length
    assert result.prompt_logprobs == [None, -2.0]
    assert result.topk_prompt_logprobs == [None, [(2, -2.0), (9, -0.1)]]
    plain = parse_completions(payload, policy_version=None, prompt_ids=[1, 2],
                              include_topk=False)
    assert plain.policy_version is None and plain.topk_prompt_logprobs is None


def test_prompt_echo_is_stripped_only_when_longer_than_the_budget() -> None:
    echoed = {"choices": [{"index": 0, "token_ids": [1, 2, 7, 8],
                           "logprobs": {"tokens": [1, 2, 7, 8],
                                        "token_logprobs": [0.0, 0.0, -1.0, -2.0]}}]}
    stripped = parse_completions(echoed, policy_version=None, prompt_ids=[1, 2],
                                 include_topk=False, max_tokens=2)
    assert stripped.sequences[0].tokens == [7, 8]
    assert stripped.sequences[0].logprobs == [-1.0, -2.0]
    # A completion that merely starts like the prompt keeps its tokens.
    kept = parse_completions(echoed, policy_version=None, prompt_ids=[1, 2],
                             include_topk=False, max_tokens=4)
    assert kept.sequences[0].tokens == [1, 2, 7, 8]


def test_malformed_tokens_are_refused() -> None:
    bad = {"choices": [{"index": 0, "logprobs": {"tokens": ["hello"], "token_logprobs": [0.0]}}]}
    with pytest.raises(ValueError, match="token_id"):
        parse_completions(bad, policy_version=None, prompt_ids=[], include_topk=False)


# -- errors and the retry matrix --------------------------------------------------


def _response(status: int, body: object = None, headers: dict[str, str] | None = None,
              text: str | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1:9/forward_backward")
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_error_detail_follows_spec_2_2() -> None:
    assert error_detail(_response(422, {"detail": "bad field"})) == "bad field"
    assert error_detail(_response(400, {"error": "boom"})) == "boom"
    assert error_detail(_response(400, {"message": "m"})) == "m"
    assert error_detail(_response(400, {"error": {"type": "BadRequestError",
                                                  "message": "too long"}})) == "too long"
    assert error_detail(_response(502, text="  upstream down \n")) == "upstream down"
    assert error_detail(_response(500, {"x": 1})) == '{"x": 1}'
    assert error_detail(httpx.Response(500, request=httpx.Request("GET", "http://x"))) is None


def test_rejection_keeps_the_server_message_reason_and_gateway_code() -> None:
    error = rejection(_response(404, {"detail": "model not served",
                                      "details": {"reason": "MODEL_NOT_SERVED"}},
                                {"X-Baseten-Error-Source": "06",
                                 "X-Baseten-Error-Code": "model_not_served"}),
                      run_id="r-1", operation="forward_backward")
    assert isinstance(error, RequestRejectedError) and isinstance(error, httpx.HTTPStatusError)
    assert error.status_code == 404 and error.reason == "MODEL_NOT_SERVED"
    assert error.gateway_code == "model_not_served"
    assert "run r-1" in str(error) and "model not served" in str(error)
    assert "Loops gateway: model_not_served" in str(error)
    assert is_final(error)


@pytest.mark.parametrize("status", [400, 404, 408, 502])
def test_submit_retries_exactly_the_not_ready_statuses(status: int) -> None:
    assert SUBMIT.retries_response(_response(status, {"detail": "starting"}))


@pytest.mark.parametrize("status", [401, 403, 409, 413, 422, 500, 501, 503, 504])
def test_submit_does_not_retry_anything_else(status: int) -> None:
    assert not SUBMIT.retries_response(_response(status, {"detail": "no"}))


def test_permanent_rejections_are_never_retried() -> None:
    gateway = _response(404, {"detail": "x"}, {"X-Baseten-Error-Source": "06",
                                               "X-Baseten-Error-Code": "run_required"})
    deactivated = _response(400, {"detail": "x"}, {"X-Baseten-Error-Source": "01",
                                                   "X-Baseten-Error-Code": "631"})
    vllm = _response(400, {"error": {"type": "BadRequestError", "message": "bad"}})
    vllm_top = _response(400, {"type": "BadRequestError", "message": "bad"})
    for response in (gateway, deactivated, vllm, vllm_top):
        assert is_permanent_rejection(response)
        assert not SUBMIT.retries_response(response)
        assert not SAMPLE.retries_response(response)
    assert SAMPLE.retries_response(_response(400, {"error": "model is loading"}))


def test_sample_and_queued_policies() -> None:
    assert SAMPLE.retries_response(_response(503, {}))
    assert not SAMPLE.retries_response(_response(504, {}))
    assert QUEUED_SAMPLE.retries_response(_response(504, {}))
    assert not QUEUED_SAMPLE.retries_response(_response(400, {}))
    assert not QUEUED_SAMPLE.retries_response(_response(503, {}))
    assert QUEUED_SAMPLE.retries_response(_response(503, {}, {"Retry-After": "2"}))


# -- the turnstile ----------------------------------------------------------------


def test_turnstile_lets_threads_through_in_ticket_order() -> None:
    turnstile = Turnstile()
    tickets = [turnstile.take() for _ in range(8)]
    passed: list[int] = []

    def holder(ticket: range) -> None:
        with turnstile.turn(ticket):
            passed.append(ticket.start)
            time.sleep(0.005)

    threads = [threading.Thread(target=holder, args=(t,)) for t in reversed(tickets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert passed == list(range(8))


def test_turnstile_async_order_ranges_and_cancelled_waiters() -> None:
    async def main() -> list[str]:
        turnstile = Turnstile()
        order: list[str] = []
        first = turnstile.take()
        chunked = turnstile.take(3)
        abandoned = turnstile.take()
        last = turnstile.take()

        async def hold(name: str, tickets: range, pause: float = 0.0) -> None:
            async with turnstile.turn_async(tickets):
                await asyncio.sleep(pause)
                order.append(name)

        tasks = [asyncio.create_task(hold("last", last)),
                 asyncio.create_task(hold("abandoned", abandoned)),
                 asyncio.create_task(hold("chunked", chunked)),
                 asyncio.create_task(hold("first", first, 0.05))]
        await asyncio.sleep(0.01)
        tasks[1].cancel()  # its place is skipped when its turn comes
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        return order

    assert asyncio.run(main()) == ["first", "chunked", "last"]
