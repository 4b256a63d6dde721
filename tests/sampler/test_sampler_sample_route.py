"""``POST /sample`` against a real sampler on 127.0.0.1 (spec 6.1, 6.3, 6.4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import torch

from tests.sampler import helpers
from tests.sampler.helpers import sample, tokens_of

PROMPTS = [
    [463, 71, 445, 313, 77, 745, 753, 622, 85],
    [12, 1001, 57, 3000],
    [900, 901, 902, 903, 904, 905, 906, 907, 908, 909, 910, 911, 912, 913, 914, 915, 916],
]
EOS = 2  # <|im_end|> in the tiny tokenizer


def eos_prompt(tokenizer) -> list[int]:
    """A chat whose answer is complete: the pretrained tiny's next token is EOS."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Say cow two times."}],
                                         tokenize=False, add_generation_prompt=True)
    return tokenizer(text + "cow cow", add_special_tokens=False)["input_ids"]


def test_greedy_matches_transformers_generate(sampler_server, reference_model) -> None:
    async def run_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{sampler_server.url}/sample", json={
                    "prompt": prompt, "n": 1, "temperature": 0.0, "max_tokens": 24,
                    "ignore_eos": True, "logprobs": 0, "return_tokens_as_token_ids": True})
                for prompt in PROMPTS])

    # Sent concurrently, so they are decoded in one batch.
    responses = asyncio.run(run_all())
    for prompt, response in zip(PROMPTS, responses, strict=True):
        assert tokens_of(response) == helpers.greedy(reference_model, prompt, 24)


def test_response_shape_and_policy_header(sampler_server, tokenizer) -> None:
    response = sample(sampler_server.url, {"prompt": PROMPTS[0], "n": 2, "max_tokens": 7,
                                           "seed": 5, "ignore_eos": True})
    assert response.status_code == 200
    assert response.headers["x-trainers-policy-version"] == "0"
    body = response.json()
    assert len(body["choices"]) == 2
    for index, choice in enumerate(body["choices"]):
        assert choice["index"] == index
        assert len(choice["token_ids"]) == 7
        assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in choice["token_ids"]]
        values = choice["logprobs"]["token_logprobs"]
        assert len(values) == 7 and all(isinstance(v, float) and v <= 0 for v in values)
        assert choice["finish_reason"] == "length"
        assert choice["prompt_token_ids"] == PROMPTS[0]
        assert choice["text"] == tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
        assert "prompt_logprobs" not in choice


def test_logprobs_k_returns_top_alternatives(sampler_server, reference_model) -> None:
    prompt = PROMPTS[1]
    choice = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 3, "temperature": 0.0,
                                         "ignore_eos": True, "logprobs": 2}).json()["choices"][0]
    tops = choice["logprobs"]["top_logprobs"]
    assert len(tops) == 3
    logprobs = helpers.forward_logprobs(reference_model, prompt + choice["token_ids"])
    for i, top in enumerate(tops):
        values, ids = logprobs[len(prompt) - 1 + i].topk(2)
        assert list(top) == [f"token_id:{t}" for t in ids.tolist()]
        assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)


def test_token_logprobs_are_the_models_raw_logprobs(sampler_server, reference_model) -> None:
    # At temperature 0.7 the reported logprob is still that of the raw model
    # distribution (vLLM's default), which is what RL importance ratios need.
    prompt = PROMPTS[1]
    choice = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 6, "temperature": 0.7,
                                         "seed": 11, "ignore_eos": True}).json()["choices"][0]
    logprobs = helpers.forward_logprobs(reference_model, prompt + choice["token_ids"])
    expected = [logprobs[len(prompt) - 1 + i, token].item()
                for i, token in enumerate(choice["token_ids"])]
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(expected, abs=1e-4)


def test_prompt_logprobs_match_a_direct_forward_pass(sampler_server, reference_model) -> None:
    prompt = PROMPTS[2]
    choice = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                                         "prompt_logprobs": 3}).json()["choices"][0]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(prompt) and entries[0] is None
    logprobs = helpers.forward_logprobs(reference_model, prompt)
    for position in range(1, len(prompt)):
        entry = entries[position]
        actual = entry[str(prompt[position])]
        assert actual["logprob"] == pytest.approx(logprobs[position - 1, prompt[position]].item(),
                                                  abs=1e-4)
        row = logprobs[position - 1]
        assert actual["rank"] == int((row > row[prompt[position]]).sum()) + 1
        top_values, top_ids = row.topk(3)
        for rank, (token, value) in enumerate(zip(top_ids.tolist(), top_values.tolist(),
                                                  strict=True), start=1):
            assert entry[str(token)]["logprob"] == pytest.approx(value, abs=1e-4)
            assert entry[str(token)]["rank"] == rank
            assert isinstance(entry[str(token)]["decoded_token"], str)
        assert len(entry) in (3, 4)  # top 3, plus the actual token when outside them


def test_long_prompts_are_prefilled_in_chunks_exactly(sampler_server, reference_model) -> None:
    # 1300 tokens: three prefill chunks of at most 512, interleaved with decoding.
    generator = torch.Generator().manual_seed(3)
    prompt = torch.randint(10, 4000, (1300,), generator=generator).tolist()
    choice = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 8, "temperature": 0.0,
                                         "ignore_eos": True,
                                         "prompt_logprobs": 0}).json()["choices"][0]
    assert choice["token_ids"] == helpers.greedy(reference_model, prompt, 8)
    got = [entry[str(token)]["logprob"] for entry, token in zip(choice["prompt_logprobs"][1:],
                                                                  prompt[1:], strict=True)]
    assert got == pytest.approx(helpers.prompt_logprobs_reference(reference_model, prompt),
                                abs=1e-4)


def test_prompt_logprobs_zero_means_only_the_actual_token(sampler_server) -> None:
    prompt = PROMPTS[0]
    entries = sample(sampler_server.url, {
        "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
        "prompt_logprobs": 0}).json()["choices"][0]["prompt_logprobs"]
    assert entries[0] is None
    assert all(list(entry) == [str(token)] for entry, token in zip(entries[1:], prompt[1:],
                                                                   strict=True))


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(sampler_server) -> None:
    body = {"prompt": PROMPTS[0], "n": 3, "max_tokens": 16, "temperature": 1.0, "seed": 1234,
            "ignore_eos": True}
    alone = sample(sampler_server.url, body).json()["choices"]

    async def crowded() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            others = [client.post(f"{sampler_server.url}/sample", json={
                "prompt": prompt, "n": 2, "max_tokens": 20 + i, "temperature": 0.9,
                "top_p": 0.9, "ignore_eos": True}) for i, prompt in enumerate(PROMPTS * 2)]
            target = client.post(f"{sampler_server.url}/sample", json=body)
            return await asyncio.gather(target, *others)

    together = asyncio.run(crowded())[0].json()["choices"]
    assert [c["token_ids"] for c in alone] == [c["token_ids"] for c in together]
    for a, b in zip(alone, together, strict=True):
        assert a["logprobs"]["token_logprobs"] == pytest.approx(b["logprobs"]["token_logprobs"],
                                                                abs=1e-5)
    # The n choices are distinct samples, and another seed gives other samples.
    assert len({tuple(c["token_ids"]) for c in alone}) == 3
    other = sample(sampler_server.url, {**body, "seed": 4321}).json()["choices"]
    assert [c["token_ids"] for c in other] != [c["token_ids"] for c in alone]


def test_unseeded_sampling_differs_between_calls(sampler_server) -> None:
    body = {"prompt": PROMPTS[0], "max_tokens": 16, "temperature": 1.0, "ignore_eos": True}
    assert tokens_of(sample(sampler_server.url, body)) != tokens_of(sample(sampler_server.url,
                                                                           body))


def test_top_k_one_and_tiny_top_p_are_greedy(sampler_server) -> None:
    prompt = PROMPTS[1]
    greedy = tokens_of(sample(sampler_server.url, {"prompt": prompt, "max_tokens": 12,
                                                   "temperature": 0.0, "ignore_eos": True}))
    top_k = tokens_of(sample(sampler_server.url, {"prompt": prompt, "max_tokens": 12,
                                                  "temperature": 1.0, "top_k": 1, "seed": 3,
                                                  "ignore_eos": True}))
    top_p = tokens_of(sample(sampler_server.url, {"prompt": prompt, "max_tokens": 12,
                                                  "temperature": 1.0, "top_p": 1e-6, "seed": 3,
                                                  "ignore_eos": True}))
    assert greedy == top_k == top_p


def test_top_k_limits_the_choice(sampler_server, reference_model) -> None:
    prompt = PROMPTS[2]
    choices = sample(sampler_server.url, {"prompt": prompt, "n": 8, "max_tokens": 1,
                                          "temperature": 5.0, "top_k": 3,
                                          "seed": 9}).json()["choices"]
    allowed = set(helpers.forward_logprobs(reference_model, prompt)[-1].topk(3).indices.tolist())
    assert {c["token_ids"][0] for c in choices} <= allowed


def test_eos_ends_with_stop_and_ignore_eos_continues(sampler_server, tokenizer) -> None:
    prompt = eos_prompt(tokenizer)
    stopped = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 5,
                                          "temperature": 0.0}).json()["choices"][0]
    assert stopped["token_ids"] == [EOS]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == ""  # special tokens are not rendered
    continued = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 5,
                                            "temperature": 0.0,
                                            "ignore_eos": True}).json()["choices"][0]
    assert len(continued["token_ids"]) == 5 and continued["finish_reason"] == "length"


def test_stop_token_ids_stop_and_are_included(sampler_server) -> None:
    body = {"prompt": PROMPTS[0], "max_tokens": 20, "temperature": 1.0, "seed": 7,
            "ignore_eos": True}
    free = tokens_of(sample(sampler_server.url, body))
    stop_at = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    choice = sample(sampler_server.url, {**body, "stop_token_ids": [free[stop_at]]}
                    ).json()["choices"][0]
    assert choice["token_ids"] == free[: stop_at + 1]
    assert choice["finish_reason"] == "stop"


def test_stop_strings_cut_the_text(sampler_server, tokenizer) -> None:
    prompt = PROMPTS[2]
    free = tokens_of(sample(sampler_server.url, {"prompt": prompt, "max_tokens": 24,
                                                 "temperature": 0.0, "ignore_eos": True}))
    text = tokenizer.decode(free, skip_special_tokens=True)
    # A stop string made of the text of tokens 4..5 of the free-running output.
    prefix = tokenizer.decode(free[:4], skip_special_tokens=True)
    stop = tokenizer.decode(free[:6], skip_special_tokens=True)[len(prefix):].strip()
    assert stop and stop in text
    choice = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 24, "temperature": 0.0,
                                         "ignore_eos": True,
                                         "stop": [stop, "never-appears-xyz"]}).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[: text.index(stop)]
    kept = tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
    assert stop in kept and choice["token_ids"] == free[: len(choice["token_ids"])]
    # The token that completed the stop string is the last one kept.
    before_last = tokenizer.decode(choice["token_ids"][:-1], skip_special_tokens=True)
    assert stop not in before_last


def test_max_tokens_defaults_to_16(sampler_server) -> None:
    choice = sample(sampler_server.url, {"prompt": PROMPTS[0], "temperature": 0.0,
                                         "ignore_eos": True}).json()["choices"][0]
    assert len(choice["token_ids"]) == 16 and choice["finish_reason"] == "length"


def test_prompt_may_fill_the_context_up_to_max_tokens(sampler_server) -> None:
    prompt = [7] * 2040
    choice = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 8, "temperature": 0.0,
                                         "ignore_eos": True}).json()["choices"][0]
    assert len(choice["token_ids"]) == 8


def test_structured_choice_and_regex(sampler_server) -> None:
    choices = sample(sampler_server.url, {
        "prompt": PROMPTS[1], "n": 4, "max_tokens": 12, "temperature": 1.0, "seed": 2,
        "structured_outputs": {"choice": ["yes", "no way"]}}).json()["choices"]
    assert all(c["text"] in ("yes", "no way") and c["finish_reason"] == "stop" for c in choices)
    choice = sample(sampler_server.url, {
        "prompt": PROMPTS[1], "max_tokens": 6, "temperature": 1.0, "seed": 2,
        "structured_outputs": {"regex": "[0-9]{2}-[a-z]{2}"}}).json()["choices"][0]
    import re

    assert re.fullmatch("[0-9]{2}-[a-z]{2}", choice["text"]), choice


def test_text_model_input_chunks_are_a_prompt(sampler_server) -> None:
    plain = tokens_of(sample(sampler_server.url, {"prompt": PROMPTS[0], "max_tokens": 5,
                                                  "temperature": 0.0, "ignore_eos": True}))
    chunked = sample(sampler_server.url, {
        "prompt": [], "max_tokens": 5, "temperature": 0.0, "ignore_eos": True,
        "return_token_ids": True,
        "model_input_chunks": [{"type": "encoded_text", "tokens": PROMPTS[0][:4]},
                               {"type": "encoded_text", "tokens": PROMPTS[0][4:]}]})
    assert tokens_of(chunked) == plain
    assert chunked.json()["choices"][0]["prompt_token_ids"] == PROMPTS[0]


def test_sdk_headers_and_extra_fields_are_accepted(sampler_server) -> None:
    response = sample(sampler_server.url, {
        "prompt": PROMPTS[0], "max_tokens": 3, "include_routed_experts": True,
        "some_future_field": {"x": 1}},
        headers={"Idempotency-Key": "8a3e6d59-3f0c-4d4e-9a0b-0c5f5d0b1a2c",
                 "X-Baseten-Session-ID": "rollout-group-7", "traceparent": "00-abc-def-01"})
    assert response.status_code == 200
    assert len(response.json()["choices"][0]["token_ids"]) <= 3


def _bad(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "BadRequestError"
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(("body", "words"), [
    ({"prompt": [1, 2, 4096]}, ("prompt[2]", "4096", "0..4095")),
    ({"prompt": [-1, 2]}, ("prompt[0]", "vocabulary")),
    ({"prompt": []}, ("prompt",)),
    ({"prompt": [1] * 2000, "max_tokens": 100}, ("max_tokens", "2048")),
    ({"prompt": [1] * 2048}, ("prompt", "2048")),
    ({"prompt": [1, 2], "n": 0}, ("n",)),
    ({"prompt": [1, 2], "n": -3}, ("n",)),
    ({"prompt": [1, 2], "n": 100000}, ("n", "limit")),
    ({"prompt": [1, 2], "temperature": -0.5}, ("temperature", "0")),
    ({"prompt": [1, 2], "top_p": 0.0}, ("top_p",)),
    ({"prompt": [1, 2], "top_p": 1.5}, ("top_p", "1")),
    ({"prompt": [1, 2], "top_k": -4}, ("top_k",)),
    ({"prompt": [1, 2], "max_tokens": 0}, ("max_tokens",)),
    ({"prompt": [1, 2], "prompt_logprobs": 21}, ("prompt_logprobs", "20")),
    ({"prompt": [1, 2], "logprobs": 21}, ("logprobs", "20")),
    ({"prompt": [1, 2], "stop_token_ids": [99999]}, ("stop_token_ids[0]",)),
    ({"prompt": [1, 2], "stop": [""]}, ("stop",)),
    ({"prompt": [1, 2], "structured_outputs": {"json": {"type": "object"}}}, ("json",)),
    ({"prompt": [1, 2], "structured_outputs": {"grammar": "root ::= 'a'"}}, ("grammar",)),
    ({"prompt": [1, 2], "structured_outputs": {"regex": "("}}, ("regex",)),
    ({"prompt": [], "model_input_chunks": [
        {"type": "image", "data": "aGVsbG8=", "format": "png", "expected_tokens": 4}]},
     ("image", "text-only")),
    ({"prompt": "hello"}, ("prompt",)),
])
def test_invalid_requests_are_refused_with_400(sampler_server, body: dict[str, Any],
                                               words: tuple[str, ...]) -> None:
    _bad(sample(sampler_server.url, body), *words)


def test_malformed_json_and_non_object_bodies(sampler_server) -> None:
    url = f"{sampler_server.url}/sample"
    _bad(httpx.post(url, content=b'{"prompt": [1, 2', headers={"content-type": "application/json"}),
         "JSON")
    _bad(httpx.post(url, json=[1, 2, 3]), "object")
    _bad(sample(sampler_server.url, {"prompt": [1, 2]}, headers={"X-Min-Policy-Version": "abc"}),
         "X-Min-Policy-Version")


def test_long_request_does_not_starve_short_ones(sampler_server) -> None:
    async def scenario() -> tuple[bool, list[float], float]:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=300) as client:
            long_task = asyncio.ensure_future(client.post(f"{sampler_server.url}/sample", json={
                "prompt": PROMPTS[0], "max_tokens": 600, "temperature": 0.0,
                "ignore_eos": True}))
            await asyncio.sleep(0.3)  # the long request is decoding now
            started = loop.time()

            async def short(i: int) -> float:
                response = await client.post(f"{sampler_server.url}/sample", json={
                    "prompt": PROMPTS[i % 3], "max_tokens": 4, "temperature": 0.0})
                assert response.status_code == 200
                return loop.time() - started

            done = await asyncio.gather(*[short(i) for i in range(6)])
            long_still_running = not long_task.done()
            long_response = await long_task
            assert len(long_response.json()["choices"][0]["token_ids"]) == 600
            return long_still_running, done, loop.time() - started

    long_still_running, short_times, long_time = asyncio.run(scenario())
    assert long_still_running, "the short requests waited for the long one"
    assert max(short_times) < long_time


def test_concurrent_requests_share_decode_steps(sampler_server) -> None:
    async def burst() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            responses = await asyncio.gather(*[client.post(f"{sampler_server.url}/sample", json={
                "prompt": PROMPTS[i % 3], "max_tokens": 40, "temperature": 1.0,
                "ignore_eos": True}) for i in range(12)])
            assert all(r.status_code == 200 for r in responses)

    before = httpx.get(f"{sampler_server.url}/health").json()["engine"]
    asyncio.run(burst())
    after = httpx.get(f"{sampler_server.url}/health").json()["engine"]
    assert after["peak_decode_rows"] >= 4
    # 12 x 40 tokens in far fewer decode steps than 12 x 39 sequential ones.
    assert after["decode_steps"] - before["decode_steps"] < 12 * 39 / 2


def test_disconnected_client_frees_its_rows(sampler_server) -> None:
    before = httpx.get(f"{sampler_server.url}/health").json()["engine"]["requests_cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sampler_server.url}/sample", json={
            "prompt": PROMPTS[0], "max_tokens": 2000 - len(PROMPTS[0]), "temperature": 0.0,
            "ignore_eos": True}, timeout=0.5)
    for _ in range(50):
        engine = httpx.get(f"{sampler_server.url}/health").json()["engine"]
        if engine["requests_cancelled"] > before:
            break
        time.sleep(0.1)
    assert engine["requests_cancelled"] > before
    assert engine["decode_rows"] == 0


def test_health_wake_and_policy_version(sampler_server) -> None:
    health = httpx.get(f"{sampler_server.url}/health").json()
    assert health["status"] == "ok" and health["base_model"] == "tiny"
    assert httpx.post(f"{sampler_server.url}/wake").status_code == 200
    version = httpx.get(f"{sampler_server.url}/trainers_policy_version").json()
    assert version == {"policy_version": 0}
    models = httpx.get(f"{sampler_server.url}/v1/models").json()["data"]
    assert models[0]["id"] == "tiny" and models[0]["parent"] is None
    assert models[0]["max_model_len"] == 2048
    # Unknown routes are 404 at once: the SDK retries a 404 only on /sample and
    # /v1/models, which always exist (its /operations poll takes a 404 as fatal).
    assert httpx.get(f"{sampler_server.url}/operations/abc").status_code == 404
