"""The OpenAI-compatible routes, driven by the ``openai`` package."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.sampler import helpers
from tests.sampler.helpers import sample, tokens_of

PROMPT_IDS = [463, 71, 445, 313, 77, 745, 753, 622, 85]


@pytest.fixture(scope="module")
def client(sampler_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sampler_server.url}/v1", api_key="unused", max_retries=0)


def test_models_list_has_the_base_model(client) -> None:
    models = {model.id: model for model in client.models.list()}
    assert "tiny" in models
    assert models["tiny"].parent is None  # type: ignore[attr-defined]


def test_completion_from_text_matches_sample(client, sampler_server, tokenizer) -> None:
    text = "the quick brown fox"
    completion = client.completions.create(model="tiny", prompt=text, max_tokens=8,
                                           temperature=0, extra_body={"ignore_eos": True})
    prompt = tokenizer(text)["input_ids"]
    expected = tokens_of(sample(sampler_server.url, {"prompt": prompt, "max_tokens": 8,
                                                     "temperature": 0.0, "ignore_eos": True}))
    choice = completion.choices[0]
    assert choice.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert choice.finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(prompt)
    assert completion.usage.completion_tokens == 8


def test_completion_token_prompts_n_logprobs_and_stop(client, reference_model,
                                                      tokenizer) -> None:
    completion = client.completions.create(model="tiny", prompt=[PROMPT_IDS, PROMPT_IDS[:5]],
                                           max_tokens=6, temperature=1.0, n=2, seed=3,
                                           logprobs=2, extra_body={"ignore_eos": True})
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    greedy_text = tokenizer.decode(helpers.greedy(reference_model, PROMPT_IDS, 6),
                                   skip_special_tokens=True)
    for choice in completion.choices:
        logprobs = choice.logprobs
        assert logprobs is not None and len(logprobs.tokens) == 6
        assert all(v <= 0 for v in logprobs.token_logprobs)
        # Each position lists the top 2 plus the sampled token.
        assert all(2 <= len(top) <= 3 for top in logprobs.top_logprobs)
    stop = greedy_text[3:6]
    stopped = client.completions.create(model="tiny", prompt=PROMPT_IDS, max_tokens=6,
                                        temperature=0, stop=[stop],
                                        extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == greedy_text[: greedy_text.index(stop)]


def test_echo_scores_the_prompt(client, reference_model, tokenizer) -> None:
    # How eval harnesses compute log-likelihoods: echo, logprobs, no new tokens.
    completion = client.completions.create(model="tiny", prompt=PROMPT_IDS, max_tokens=0,
                                           echo=True, logprobs=1, temperature=0)
    choice = completion.choices[0]
    assert choice.text == tokenizer.decode(PROMPT_IDS)
    values = choice.logprobs.token_logprobs
    assert len(values) == len(PROMPT_IDS) and values[0] is None
    assert values[1:] == pytest.approx(
        helpers.prompt_logprobs_reference(reference_model, PROMPT_IDS), abs=1e-4)


def test_chat_completion_uses_the_chat_template(client, sampler_server, tokenizer) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                          temperature=0, logprobs=True, top_logprobs=2)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=True)
    prompt = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    expected = sample(sampler_server.url, {"prompt": prompt, "max_tokens": 6,
                                           "temperature": 0.0}).json()["choices"][0]
    choice = chat.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected["text"]
    assert choice.finish_reason == expected["finish_reason"]
    assert chat.usage is not None and chat.usage.prompt_tokens == len(prompt)
    assert choice.logprobs is not None
    assert [c.logprob for c in choice.logprobs.content] == pytest.approx(
        expected["logprobs"]["token_logprobs"], abs=1e-5)
    assert all(len(c.top_logprobs) == 2 for c in choice.logprobs.content)


def test_trained_adapter_by_model_id(paired_sampler, paired_run, loops_home,
                                     adapter_factory, tokenizer) -> None:
    adapter = adapter_factory(21)
    adapter.save(loops_home, paired_run, "for-openai", step=30)
    assert helpers.publish(loops_home, paired_run, 30, "for-openai").status_code == 200
    client = openai.OpenAI(base_url=f"{paired_sampler.url}/v1", api_key="unused",
                           max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["tiny", "default"]
    live = client.completions.create(model="default", prompt=PROMPT_IDS, max_tokens=10,
                                     temperature=0, extra_body={"ignore_eos": True})
    expected = helpers.greedy(adapter.model, PROMPT_IDS, 10)
    assert live.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    path = f"bt://loops:{paired_run}/sampler_weights/for-openai"
    pinned = client.completions.create(model=path, prompt=PROMPT_IDS, max_tokens=10,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert pinned.choices[0].text == live.choices[0].text
    base = client.completions.create(model="tiny", prompt=PROMPT_IDS, max_tokens=10,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert base.choices[0].text != live.choices[0].text
    raw = httpx.post(f"{paired_sampler.url}/v1/completions", json={
        "model": "default", "prompt": PROMPT_IDS, "max_tokens": 2})
    assert raw.headers["x-trainers-policy-version"] == "30"


def test_errors_are_openai_errors(client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=2, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt=[1] * 2040, max_tokens=100)
    with pytest.raises(openai.BadRequestError, match="image"):
        client.chat.completions.create(model="tiny", max_tokens=2, messages=[{
            "role": "user", "content": [{"type": "image_url",
                                         "image_url": {"url": "http://x/y.png"}}]}])
