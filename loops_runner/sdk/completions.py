"""The ``/sample`` body (spec 6.1) and reading its completions answer (6.3, 6.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loops_runner.wire import (
    EncodedTextChunk,
    ExternalRef,
    ImageChunk,
    ModelInput,
    SampledSequence,
    SampleResponse,
    SamplingParams,
)
from loops_runner.wire.sampling import MAX_PROMPT_LOGPROBS, SampleRequest

TOKEN_ID_PREFIX = "token_id:"


def sample_body(prompt: ModelInput, num_samples: int, params: SamplingParams,
                include_prompt_logprobs: bool, topk_prompt_logprobs: int,
                include_routed_experts: bool | None = None, *, model: str | None = None,
                lora: str | None = None) -> tuple[dict[str, Any], list[int]]:
    """The request body and the prompt ids it carries (empty for image prompts).

    The body is a :class:`SampleRequest` (the model the sampler parses), dumped
    with only the fields set here: an option the caller left alone is not sent,
    so the server's own default applies. ``model`` and ``lora`` route a queued
    sampler's request; a dedicated sampler gets neither.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not 0 <= topk_prompt_logprobs <= MAX_PROMPT_LOGPROBS:
        raise ValueError(f"topk_prompt_logprobs must be in 0..{MAX_PROMPT_LOGPROBS}, "
                         f"got {topk_prompt_logprobs}")
    has_images = any(isinstance(chunk, ImageChunk) for chunk in prompt.chunks)
    prompt_ids = [] if has_images else [t for chunk in prompt.chunks
                                        if isinstance(chunk, EncodedTextChunk)
                                        for t in chunk.tokens]
    stop = params.stop
    stop_ids = isinstance(stop, list) and bool(stop) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in stop)
    request = SampleRequest(
        prompt=prompt_ids, n=num_samples, temperature=params.temperature,
        top_p=params.top_p, logprobs=0, return_tokens_as_token_ids=True,
        # The sampler expands images itself: it knows its placeholder token.
        model_input_chunks=[chunk.model_dump(mode="json") for chunk in prompt.chunks]
        if has_images else None,
        return_token_ids=True if has_images else None,
        include_routed_experts=include_routed_experts,
        prompt_logprobs=topk_prompt_logprobs if include_prompt_logprobs else None,
        max_tokens=params.max_tokens, seed=params.seed,
        top_k=params.top_k if params.top_k is not None and params.top_k > 0 else None,
        stop_token_ids=list(stop) if stop_ids else None,  # type: ignore[arg-type]
        stop=None if stop_ids else stop,  # type: ignore[arg-type]
        structured_outputs=params.structured_outputs, model=model, lora=lora)
    return request.model_dump(mode="json", exclude_none=True, exclude_unset=True), prompt_ids


def _token_id(token: Any) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        return token
    if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
        try:
            return int(token[len(TOKEN_ID_PREFIX):])
        except ValueError:
            pass
    raise ValueError(f"completion token {token!r} is neither an int nor 'token_id:<int>'")


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                       for v in value):
        return list(value)
    return None


def _prompt_logprobs(raw: Any, prompt_ids: list[int], with_topk: bool) -> tuple[
        list[float | None] | None, list[list[tuple[int, float]] | None] | None]:
    """Per prompt position: the actual token's logprob, and (when asked) every listed one."""
    if not raw:
        return None, None
    actual: list[float | None] = []
    topk: list[list[tuple[int, float]] | None] = []
    for position, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            actual.append(None)
            topk.append(None)
            continue
        token_entry = entry.get(str(prompt_ids[position])) if position < len(prompt_ids) \
            else None
        value = token_entry.get("logprob") if isinstance(token_entry, Mapping) else None
        actual.append(float(value) if value is not None else None)
        topk.append([(int(token), float(item["logprob"])) for token, item in entry.items()
                     if isinstance(item, Mapping) and item.get("logprob") is not None])
    return actual, (topk if with_topk else None)


def _echoed(tokens: list[int], prompt: list[int], max_tokens: int | None) -> bool:
    """Whether ``tokens`` starts with an echo of the prompt (spec 6.3's echo tolerance).

    A completion may legitimately begin with the prompt's tokens (small models
    repeat themselves), so when the budget is known the echo must also be
    proven by length: more tokens than ``max_tokens`` allows.
    """
    if not prompt or tokens[:len(prompt)] != prompt:
        return False
    return max_tokens is None or len(tokens) > max_tokens


def parse_completions(payload: Any, *, policy_version: str | None, prompt_ids: list[int],
                      include_topk: bool, max_tokens: int | None = None) -> SampleResponse:
    """A ``SampleResponse`` from the OpenAI-completions-shaped answer."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("choices"), list):
        raise ValueError(f"sample answer has no 'choices' list: {str(payload)[:300]}")
    sequences: list[SampledSequence] = []
    raw_prompt_logprobs = None
    echoed_prompt: list[int] | None = None
    for choice in payload["choices"]:
        logprobs_obj = choice.get("logprobs") or {}
        raw_tokens = choice.get("token_ids") or logprobs_obj.get("tokens") or []
        tokens = [_token_id(token) for token in raw_tokens]
        token_logprobs = logprobs_obj.get("token_logprobs")
        logprobs = [float(v) for v in token_logprobs] if token_logprobs is not None else None
        choice_prompt = _int_list(choice.get("prompt_token_ids"))
        if echoed_prompt is None and choice_prompt is not None:
            echoed_prompt = choice_prompt
        reference = choice_prompt if choice_prompt is not None else prompt_ids
        if _echoed(tokens, reference, max_tokens):
            tokens = tokens[len(reference):]
            if logprobs is not None:
                logprobs = logprobs[len(reference):]
        ref = choice.get("routed_experts_ref")
        sequences.append(SampledSequence(
            tokens=tokens,
            logprobs=logprobs,
            stop_reason=choice.get("finish_reason") or "length",
            text=choice.get("text"),
            routed_experts=ExternalRef.model_validate(ref) if ref else None,
        ))
        if raw_prompt_logprobs is None:
            raw_prompt_logprobs = choice.get("prompt_logprobs")
    prompt = echoed_prompt if echoed_prompt is not None else prompt_ids
    actual, topk = _prompt_logprobs(raw_prompt_logprobs, prompt, include_topk)
    return SampleResponse(
        sequences=sequences,
        policy_version=int(policy_version) if policy_version is not None else None,
        prompt_token_ids=prompt,
        prompt_logprobs=actual,
        topk_prompt_logprobs=topk,
    )
