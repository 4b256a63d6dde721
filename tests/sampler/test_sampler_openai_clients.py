"""The OpenAI routes as outside clients use them: the real ``openai`` client with its
default settings (retries on), streaming, 404s, OpenAI's defaults and limits.

Every test talks to the session's real ``loops-runner serve sampler`` (tiny).
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.sampler import helpers
from tests.sampler.helpers import sample, tokens_of

PROMPT_IDS = [463, 71, 445, 313, 77, 745, 753, 622, 85]
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours and a number."}]


class Counted:
    """An ``openai`` client with default settings whose HTTP requests are counted."""

    def __init__(self, url: str) -> None:
        self.sent: list[str] = []
        http = httpx.Client(event_hooks={"request": [
            lambda request: self.sent.append(f"{request.method} {request.url.path}")]})
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http)


@pytest.fixture(scope="module")
def counted(sampler_server) -> Counted:
    return Counted(sampler_server.url)


@pytest.fixture(scope="module")
def client(counted: Counted) -> openai.OpenAI:
    return counted.client


def _engine(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/health", timeout=30).json()["engine"]


# -- routes ------------------------------------------------------------------------


def test_unknown_routes_and_models_are_404_once_not_retried(counted: Counted) -> None:
    client = counted.client
    calls = [
        lambda: client.responses.create(model="tiny", input="hi"),
        lambda: client.embeddings.create(model="tiny", input="hi"),
        lambda: client.models.retrieve("no-such-model"),
        lambda: client.completions.create(model="no-such-model", prompt="hi", max_tokens=2),
        lambda: client.chat.completions.create(model="no-such-model", messages=MESSAGES),
    ]
    for call in calls:
        before = len(counted.sent)
        with pytest.raises(openai.NotFoundError) as raised:
            call()
        assert len(counted.sent) == before + 1, counted.sent[before:]  # never retried
        error = raised.value.body
        assert isinstance(error, dict) and error["type"] == "invalid_request_error"
        assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError, match="openai-api/"):
        client.responses.create(model="tiny", input="hi")
    with pytest.raises(openai.NotFoundError) as raised:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert raised.value.code == "model_not_found" and raised.value.param == "model"


def test_wrong_method_is_405_with_allow(sampler_server) -> None:
    response = httpx.get(f"{sampler_server.url}/v1/completions", timeout=30)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_models_retrieve(client: openai.OpenAI) -> None:
    model = client.models.retrieve("tiny")
    assert model.id == "tiny" and model.object == "model"
    assert next(m.id for m in client.models.list()) == "tiny"


def test_loops_sdk_routes_keep_their_protocol_answers(sampler_server) -> None:
    """/sample stays vLLM-shaped (the SDK's fail-fast 400) whatever the OpenAI routes do."""
    response = sample(sampler_server.url, {"prompt": PROMPT_IDS, "max_tokens": 2,
                                           "temperature": -1.0})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"
    assert httpx.get(f"{sampler_server.url}/v1/models", timeout=30).status_code == 200


# -- OpenAI's defaults and limits --------------------------------------------------


def test_max_tokens_defaults_per_route(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="tiny", prompt=PROMPT_IDS, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    # Chat: the rest of the context (2048 for tiny), as OpenAI does.
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert chat.usage is not None
    assert chat.usage.prompt_tokens + chat.usage.completion_tokens == 2048
    assert chat.choices[0].finish_reason == "length"


@pytest.mark.parametrize(("route", "extra", "param", "words"), [
    ("completions", {"temperature": 2.5}, "temperature", "2"),
    ("chat", {"temperature": -0.1}, "temperature", "0"),
    ("completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ("chat", {"top_logprobs": 2}, "top_logprobs", "requires logprobs"),
    ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "20"),
    ("completions", {"n": 3, "best_of": 2}, "best_of", "at least n"),
    ("completions", {"best_of": 3, "stream": True}, "best_of", "streaming"),
    ("chat", {"n": 129}, "n", "128"),
    ("chat", {"presence_penalty": 2.5}, "presence_penalty", "2"),
    ("completions", {"logit_bias": {"5": 101}}, "logit_bias", "-100..100"),
    ("completions", {"logit_bias": {"x": 1}}, "logit_bias", "token id"),
    ("completions", {"stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "tools", "not supported"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format", "JSON mode"),
])
def test_openai_limits_are_400_naming_the_parameter(sampler_server, route: str,
                                                    extra: dict[str, Any], param: str,
                                                    words: str) -> None:
    if route == "chat":
        path, body = "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES}
    else:
        path, body = "/v1/completions", {"model": "tiny", "prompt": "hi"}
    response = httpx.post(f"{sampler_server.url}{path}", json={**body, "max_tokens": 2, **extra},
                          timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


def test_best_of_returns_the_n_most_likely(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="tiny", prompt=PROMPT_IDS, max_tokens=6,
                                           n=2, best_of=5, seed=11, logprobs=0,
                                           extra_body={"ignore_eos": True})
    assert [c.index for c in completion.choices] == [0, 1]
    drawn = client.completions.create(model="tiny", prompt=PROMPT_IDS, max_tokens=6, n=5,
                                      seed=11, logprobs=0, extra_body={"ignore_eos": True})

    def mean(choice: Any) -> float:
        values = choice.logprobs.token_logprobs
        return sum(values) / len(values)

    best = sorted((mean(c) for c in drawn.choices), reverse=True)[:2]
    assert [mean(c) for c in completion.choices] == pytest.approx(best)
    assert completion.usage is not None and completion.usage.completion_tokens == 5 * 6


# -- penalties and logit bias --------------------------------------------------------


def _penalized_greedy(model: Any, prompt: list[int], steps: int, presence: float,
                      frequency: float, bias: dict[int, float]) -> list[int]:
    """OpenAI's penalty formula, applied by hand around plain forward passes."""
    import torch

    tokens: list[int] = []
    with torch.no_grad(), helpers.one_thread():
        for _ in range(steps):
            logits = model(torch.tensor([prompt + tokens])).logits[0, -1].float()
            for token, value in bias.items():
                logits[token] += value
            counts = torch.bincount(torch.tensor(tokens, dtype=torch.long),
                                    minlength=logits.shape[0]).float()
            logits -= frequency * counts + presence * (counts > 0).float()
            tokens.append(int(logits.argmax()))
    return tokens


def test_penalties_and_logit_bias_follow_openais_formula(client: openai.OpenAI, sampler_server,
                                                         reference_model, tokenizer) -> None:
    plain = helpers.greedy(reference_model, PROMPT_IDS, 12)
    bias = {plain[0]: -100.0, 777: 3.0}
    expected = _penalized_greedy(reference_model, PROMPT_IDS, 12, 0.7, 0.9, bias)
    assert expected != plain
    completion = client.completions.create(
        model="tiny", prompt=PROMPT_IDS, max_tokens=12, temperature=0, presence_penalty=0.7,
        frequency_penalty=0.9, logit_bias={str(k): v for k, v in bias.items()},
        extra_body={"ignore_eos": True}, logprobs=0)
    assert completion.choices[0].logprobs is not None
    assert completion.choices[0].logprobs.tokens == [tokenizer.decode([t]) for t in expected]
    # The Loops /sample route takes the same fields (vLLM extras) with the same result.
    via_sample = tokens_of(sample(sampler_server.url, {
        "prompt": PROMPT_IDS, "max_tokens": 12, "temperature": 0.0, "ignore_eos": True,
        "presence_penalty": 0.7, "frequency_penalty": 0.9,
        "logit_bias": {str(k): v for k, v in bias.items()}}))
    assert via_sample == expected
    forced = client.completions.create(model="tiny", prompt=PROMPT_IDS, max_tokens=5,
                                       temperature=0.8, seed=1, logit_bias={"777": 100},
                                       extra_body={"ignore_eos": True})
    assert forced.choices[0].text == tokenizer.decode([777] * 5, skip_special_tokens=True)


# -- streaming ---------------------------------------------------------------------


def _joined_completion(chunks: list[Any], n: int) -> tuple[list[str], list[str | None],
                                                            list[list[float]]]:
    texts, reasons, logprobs = [""] * n, [None] * n, [[] for _ in range(n)]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                reasons[choice.index] = choice.finish_reason
            if choice.logprobs is not None:
                logprobs[choice.index] += choice.logprobs.token_logprobs
    return texts, reasons, logprobs


@pytest.mark.parametrize("stop", [None, ["e", ", "]])
def test_streamed_completion_equals_non_streamed(client: openai.OpenAI, stop) -> None:
    settings: dict[str, Any] = {"model": "tiny", "prompt": [PROMPT_IDS, PROMPT_IDS[:4]],
                                "max_tokens": 24, "temperature": 1.0, "n": 2, "seed": 7,
                                "logprobs": 2, "stop": stop}
    whole = client.completions.create(**settings)
    chunks = list(client.completions.create(**settings, stream=True,
                                            stream_options={"include_usage": True}))
    texts, reasons, logprobs = _joined_completion(chunks, 4)
    assert texts == [c.text for c in whole.choices]
    assert reasons == [c.finish_reason for c in whole.choices]
    assert logprobs == [c.logprobs.token_logprobs for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])
    if stop:
        assert "stop" in reasons


def test_streamed_chat_equals_non_streamed(client: openai.OpenAI) -> None:
    settings: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 30,
                                "temperature": 1.0, "n": 3, "seed": 5, "logprobs": True,
                                "top_logprobs": 2, "stop": ["\n\n"]}
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(**settings, stream=True,
                                                 stream_options={"include_usage": True}))
    texts, reasons = [""] * 3, [None] * 3
    roles, logprobs = [None] * 3, [[] for _ in range(3)]
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            roles[choice.index] = roles[choice.index] or choice.delta.role
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
            if choice.logprobs is not None and choice.logprobs.content:
                logprobs[choice.index] += [(c.token, c.logprob, len(c.top_logprobs))
                                           for c in choice.logprobs.content]
    assert texts == [c.message.content for c in whole.choices]
    assert reasons == [c.finish_reason for c in whole.choices]
    assert roles == ["assistant"] * 3
    assert logprobs == [[(c.token, c.logprob, len(c.top_logprobs)) for c in
                         choice.logprobs.content] for choice in whole.choices]
    assert chunks[-1].usage == whole.usage


def _sse_lines(response: httpx.Response):  # -> Iterator[dict | str]
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


def test_tokens_stream_while_the_engine_still_generates(sampler_server) -> None:
    body = {"model": "tiny", "prompt": PROMPT_IDS, "max_tokens": 600, "temperature": 0,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{sampler_server.url}/v1/completions", json=body,
                      timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = _sse_lines(response)
        first = next(lines)
        assert first["choices"][0]["text"]
        # Not buffered: the first text is here while its request still decodes.
        assert _engine(sampler_server.url)["decode_rows"] >= 1
        rest = list(lines)
    assert rest[-1] == "[DONE]"
    assert len(rest) > 2 and rest[-2]["choices"][0]["finish_reason"] == "length"


def test_a_client_that_disconnects_frees_its_rows(sampler_server) -> None:
    cancelled = _engine(sampler_server.url)["requests_cancelled"]
    body = {"model": "tiny", "messages": MESSAGES, "n": 2, "temperature": 0.7,
            "ignore_eos": True, "stream": True}  # no max_tokens: the rest of the context
    with httpx.stream("POST", f"{sampler_server.url}/v1/chat/completions", json=body,
                      timeout=120) as response:
        lines = _sse_lines(response)
        next(lines)  # the roles
        next(lines)  # the first tokens: both rows are decoding
        assert _engine(sampler_server.url)["decode_rows"] >= 2
    deadline = time.monotonic() + 20
    engine = _engine(sampler_server.url)
    while time.monotonic() < deadline and (engine["decode_rows"] or
                                           engine["requests_cancelled"] == cancelled):
        time.sleep(0.05)
        engine = _engine(sampler_server.url)
    assert engine["decode_rows"] == 0
    assert engine["requests_cancelled"] == cancelled + 1
