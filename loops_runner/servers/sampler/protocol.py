"""Wire bodies <-> engine jobs: the sampler's request limits and response shapes.

Every refusal raises ``InvalidRequest`` with a message naming the field and
the limit; the routes answer it with the vLLM-style 400 the SDK never retries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from loops_runner.servers.common import InvalidRequest
from loops_runner.servers.sampler.constraints import ConstraintError, compile_pattern
from loops_runner.servers.sampler.engine import (
    GenerationOutput,
    PromptPosition,
    SamplingSpec,
)
from loops_runner.wire.sampling import (
    MAX_PROMPT_LOGPROBS,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    PromptLogprobEntry,
    SampleRequest,
)

# structured_outputs keys that tune a constraint rather than name one (vLLM).
_CONSTRAINT_OPTIONS = {"disable_fallback", "disable_any_whitespace",
                       "disable_additional_properties", "whitespace_pattern", "backend"}


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_context_length: int
    default_max_tokens: int
    max_n: int
    max_logprobs: int = MAX_PROMPT_LOGPROBS


def check_token_ids(tokens: list[int], field: str, vocab_size: int) -> None:
    for index, token in enumerate(tokens):
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"{field}[{index}] = {token} is outside the vocabulary "
                                 f"(token ids must be in 0..{vocab_size - 1})", field)


def prompt_tokens(body: SampleRequest) -> list[int]:
    """The prompt ids, from ``prompt`` or from text-only ``model_input_chunks``."""
    if not body.model_input_chunks:
        return list(body.prompt)
    tokens: list[int] = []
    for index, chunk in enumerate(body.model_input_chunks):
        kind = chunk.get("type") if isinstance(chunk, dict) else None
        if kind == "image":
            raise InvalidRequest(
                f"model_input_chunks[{index}] is an image chunk; this sampler serves a "
                "text-only model", "model_input_chunks")
        if kind != "encoded_text" or not isinstance(chunk.get("tokens"), list) \
                or not all(isinstance(t, int) for t in chunk["tokens"]):
            raise InvalidRequest(f"model_input_chunks[{index}] must be an encoded_text chunk "
                                 "with a list of integer tokens", "model_input_chunks")
        tokens.extend(chunk["tokens"])
    if body.prompt and body.prompt != tokens:
        raise InvalidRequest("prompt and model_input_chunks disagree; send one of them",
                             "prompt")
    return tokens


def resolve_max_tokens(requested: int | None, prompt_length: int, limits: Limits,
                       field: str = "max_tokens") -> int:
    room = limits.max_context_length - prompt_length
    if room < 1:
        raise InvalidRequest(
            f"prompt has {prompt_length} tokens, leaving no room to generate within the "
            f"model's context of {limits.max_context_length} tokens", "prompt")
    if requested is None:
        return min(limits.default_max_tokens, room)
    if requested < 1:
        raise InvalidRequest(f"{field} must be at least 1, got {requested}", field)
    if prompt_length + requested > limits.max_context_length:
        raise InvalidRequest(
            f"prompt ({prompt_length} tokens) + {field} ({requested}) = "
            f"{prompt_length + requested} exceeds the model's context of "
            f"{limits.max_context_length} tokens", field)
    return requested


def constraint_pattern(structured: dict[str, Any] | None) -> str | None:
    if not structured:
        return None
    kinds = {key: value for key, value in structured.items()
             if value is not None and value is not False and key not in _CONSTRAINT_OPTIONS}
    if not kinds:
        return None
    if len(kinds) > 1:
        raise InvalidRequest(f"structured_outputs names several constraints ({sorted(kinds)}); "
                             "send one", "structured_outputs")
    (kind, value), = kinds.items()
    try:
        return compile_pattern(kind, value)
    except ConstraintError as exc:
        raise InvalidRequest(str(exc), "structured_outputs") from exc


MAX_LOGIT_BIAS = 100.0


def logit_bias_ids(bias: dict[str, float] | None,
                   vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``logit_bias`` (token id as a string -> -100..100) as engine pairs."""
    pairs: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"logit_bias key {key!r} is not a token id (0.."
                                 f"{vocab_size - 1})", "logit_bias")
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise InvalidRequest(f"logit_bias[{key}] = {value} is outside "
                                 f"-{MAX_LOGIT_BIAS:g}..{MAX_LOGIT_BIAS:g}", "logit_bias")
        pairs.append((token, value))
    return tuple(pairs)


def top_k_setting(top_k: int | None, vocab_size: int) -> int:
    if top_k is None or top_k in (0, -1):
        return 0
    if top_k < -1:
        raise InvalidRequest(f"top_k must be -1 or 0 (off) or a positive count, got {top_k}",
                             "top_k")
    return min(top_k, vocab_size)


def sample_spec(body: SampleRequest, prompt: list[int], limits: Limits) -> SamplingSpec:
    """Check a ``/sample`` body against the model's limits; return the engine's settings."""
    if not prompt:
        raise InvalidRequest("prompt must contain at least one token", "prompt")
    check_token_ids(prompt, "prompt", limits.vocab_size)
    if body.n > limits.max_n:
        raise InvalidRequest(f"n = {body.n} exceeds this sampler's limit of {limits.max_n} "
                             "samples per request", "n")
    max_tokens = resolve_max_tokens(body.max_tokens, len(prompt), limits)
    stop_ids = list(body.stop_token_ids or [])
    check_token_ids(stop_ids, "stop_token_ids", limits.vocab_size)
    stops = body.stop_strings()
    if any(not stop for stop in stops):
        raise InvalidRequest("stop strings must be non-empty", "stop")
    logprobs = body.logprobs or 0
    if logprobs > limits.max_logprobs:
        raise InvalidRequest(f"logprobs = {logprobs} exceeds the limit of {limits.max_logprobs}",
                             "logprobs")
    return SamplingSpec(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=top_k_setting(body.top_k, limits.vocab_size),
        seed=body.seed,
        stop=tuple(stops),
        stop_token_ids=tuple(stop_ids),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=body.prompt_logprobs,
        regex=constraint_pattern(body.structured_outputs),
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=logit_bias_ids(body.logit_bias, limits.vocab_size),
    )


# -- responses -----------------------------------------------------------------


class TokenText:
    """Token id -> its decoded text, cached (prompt logprobs ask for many)."""

    def __init__(self, tokenizer: Any) -> None:
        self._decode = lru_cache(maxsize=65536)(
            lambda token: tokenizer.decode([token], skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False))

    def __call__(self, token: int) -> str:
        return self._decode(token)


def _token_label(token: int, as_ids: bool, text: TokenText) -> str:
    return f"token_id:{token}" if as_ids else text(token)


def prompt_logprobs_wire(positions: list[PromptPosition | None],
                         text: TokenText) -> list[dict[str, PromptLogprobEntry] | None]:
    """Spec 6.4: null at 0; else the actual token plus the top k, keyed by string id."""
    wire: list[dict[str, PromptLogprobEntry] | None] = []
    for position in positions:
        if position is None:
            wire.append(None)
            continue
        entry = {str(position.token_id): PromptLogprobEntry(
            logprob=position.logprob, rank=position.rank,
            decoded_token=text(position.token_id))}
        for rank, (token, logprob) in enumerate(position.top, start=1):
            entry.setdefault(str(token), PromptLogprobEntry(
                logprob=logprob, rank=rank, decoded_token=text(token)))
        wire.append(entry)
    return wire


def completion_response(output: GenerationOutput, prompt: list[int], *, model: str,
                        tokens_as_ids: bool, text: TokenText) -> CompletionResponse:
    prompt_wire = (prompt_logprobs_wire(output.prompt_logprobs, text)
                   if output.prompt_logprobs is not None else None)
    choices = []
    for index, sequence in enumerate(output.sequences):
        top = None
        if sequence.top_logprobs is not None:
            top = [{_token_label(t, tokens_as_ids, text): lp for t, lp in alternatives}
                   for alternatives in sequence.top_logprobs]
        choices.append(CompletionChoice(
            index=index,
            text=sequence.text,
            finish_reason=sequence.finish_reason,
            token_ids=sequence.token_ids,
            logprobs=CompletionLogprobs(
                tokens=[_token_label(t, tokens_as_ids, text) for t in sequence.token_ids],
                token_logprobs=sequence.logprobs,
                top_logprobs=top),
            prompt_token_ids=prompt,
            prompt_logprobs=prompt_wire,
        ))
    return CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", model=model, choices=choices)
