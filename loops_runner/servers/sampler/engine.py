"""The generation engine's interface: what the sampler's routes need from an engine.

The routes only speak this interface (``Engine``): submit a ``GenerationJob``
(prompt ids, ``n``, sampling settings, the adapter to use, and for streaming a
listener that gets each step's ``TokenEvent``s), await a ``GenerationOutput``;
load adapters with ``load_adapter``. ``TorchEngine``
(``torch_engine.py``) implements it; a vLLM engine for GPU machines would
implement the same four methods (``load_adapter`` returning a LoRA request
handle, ``generate`` wrapping its async engine). Importing this module imports
no torch.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample one request; every field already validated by the routes."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int = 0  # alternatives per generated token (the sampled one always)
    prompt_logprobs: int | None = None  # None = not requested; else k alternatives
    regex: str | None = None  # structured-output constraint
    # OpenAI's penalties: subtracted from a token's logit once it appeared in the
    # completion (presence) and once per appearance (frequency); -2..2.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)


class TokenEvent(NamedTuple):
    """One new token of one choice, handed to a streaming job's listener as the
    engine produces it. How a choice ends is told by the job's final output.

    A named tuple, not a frozen dataclass: the engine builds one per streamed
    token inside its step, and a frozen dataclass's ``__init__`` cost 2% of the
    step with 32 streams."""

    index: int
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] | None


@dataclass
class GenerationJob:
    prompt: list[int]
    n: int
    spec: SamplingSpec
    adapter: Any = None  # a handle from ``Engine.load_adapter``; None = base model
    # Streaming: called on the engine's thread after every step that touched this
    # job, with that step's events (it must only hand them over, never block).
    listener: Callable[[list[TokenEvent]], None] | None = None


@dataclass
class SequenceOutput:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    text: str
    top_logprobs: list[list[tuple[int, float]]] | None = None


@dataclass(frozen=True)
class PromptPosition:
    """The actual prompt token at a position, its logprob and rank, plus the top k."""

    token_id: int
    logprob: float
    rank: int
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenerationOutput:
    sequences: list[SequenceOutput]
    prompt_logprobs: list[PromptPosition | None] | None = None


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    vocab_size: int
    max_context_length: int
    eos_token_ids: frozenset[int]
    device: str
    dtype: str


class EngineClosedError(RuntimeError):
    pass


class Engine(abc.ABC):
    """What the sampler's routes need from a generation engine."""

    info: EngineInfo
    tokenizer: Any

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    @abc.abstractmethod
    def load_adapter(self, directory: Path, key: str) -> Any:
        """Load a PEFT LoRA folder; blocking (call it from a worker thread).

        Raises ``lora.AdapterError`` when the folder cannot be served.
        """

    @abc.abstractmethod
    async def generate(self, job: GenerationJob) -> GenerationOutput:
        """Run one request; cancelling the awaiting task drops it from the batch."""

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]: ...
