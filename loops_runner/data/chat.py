"""Rendering conversations into training tokens with an assistant-only loss mask.

Tokens always come from the tokenizer's own ``apply_chat_template``. The mask
comes from the template's generation markers when it has them; otherwise it is
derived by rendering each assistant turn's prefix and checking that the prefix
tokens agree with the full rendering (so the mask is never silently off by a
token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from loops_runner.wire import Datum, ModelInput, TensorData

TrainOn = Literal["assistant", "all"]


def next_token_datum(tokens: list[int], per_token: dict[str, list[float]]) -> Datum:
    """Next-token layout: position i of the input predicts target i, so every
    per-token input (weights, logprobs, advantages) is shifted by one to line up
    with its target."""
    n = len(tokens) - 1
    inputs = {"target_tokens": TensorData(data=tokens[1:], dtype="int64", shape=[n])}
    for name, values in per_token.items():
        inputs[name] = TensorData(data=values[1:], dtype="float32", shape=[n])
    return Datum(model_input=ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


@dataclass(frozen=True)
class RenderedExample:
    tokens: list[int]
    weights: list[float]  # 1.0 where the token is trained on

    @property
    def trained_tokens(self) -> int:
        return int(sum(self.weights[1:]))

    def to_datum(self) -> Datum:
        return next_token_datum(self.tokens, {"weights": self.weights})

    def to_trained_datum(self) -> Datum:
        """``to_datum`` with every untrained target masked (id -1).

        The trainer computes the LM head and log-softmax only where a target
        exists, so a loss that reads weighted positions alone (DPO's per-sequence
        sums) gets the same value for less work: on these chats the prompt is
        most of each row. The trainer then returns no logprob for the masked
        positions, so use ``to_datum`` where those are read.
        """
        datum = self.to_datum()
        masked = [token if weight else -1
                  for token, weight in zip(self.tokens[1:], self.weights[1:], strict=True)]
        datum.loss_fn_inputs["target_tokens"] = TensorData(data=masked, dtype="int64",
                                                           shape=[len(masked)])
        return datum


def _template_tokens(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)


def _mask_from_prefixes(tokenizer: Any, messages: list[dict[str, str]],
                        tokens: list[int]) -> list[float]:
    mask = [0.0] * len(tokens)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _template_tokens(tokenizer, messages[:index],
                                 add_generation_prompt=True)["input_ids"]
        end = _template_tokens(tokenizer, messages[: index + 1])["input_ids"]
        if tokens[: len(start)] != list(start) or tokens[: len(end)] != list(end):
            raise ValueError("the chat template does not render conversations prefix-stably; "
                             "use train_on=all or a template with {% generation %} markers")
        for position in range(len(start), len(end)):
            mask[position] = 1.0
    return mask


def render(tokenizer: Any, messages: list[dict[str, str]], train_on: TrainOn = "assistant",
           max_length: int | None = None) -> RenderedExample:
    encoded = _template_tokens(tokenizer, messages, return_assistant_tokens_mask=True)
    tokens = list(encoded["input_ids"])
    if train_on == "all":
        weights = [1.0] * len(tokens)
    else:
        marks = encoded.get("assistant_masks")
        if marks is not None and any(marks):
            weights = [float(m) for m in marks]
        else:
            weights = _mask_from_prefixes(tokenizer, messages, tokens)
    if max_length is not None and len(tokens) > max_length:
        tokens, weights = tokens[:max_length], weights[:max_length]
    return RenderedExample(tokens, weights)


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The tokens a model sees before answering the last assistant turn."""
    context = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return list(_template_tokens(tokenizer, context, add_generation_prompt=True)["input_ids"])
