"""Greedy task accuracy of a sampler on task rows: the number every recipe compares.

Prompts go out concurrently so the sampler batches them; the completion is
decoded without special tokens and scored by the registry's scorer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from loops_runner.data.chat import prompt_tokens
from loops_runner.sdk import ModelInput, SamplingParams
from loops_runner.tasks.rows import Row, as_messages
from loops_runner.tasks.scoring import score

CONCURRENCY = 32


async def _completions(sampler: Any, tokenizer: Any, rows: Sequence[Row],
                       params: SamplingParams) -> list[str]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(row: Row) -> str:
        prompt = ModelInput.from_ints(prompt_tokens(tokenizer, as_messages(row)))
        async with limit:
            result = await sampler.sample_async(prompt, 1, params)
        return tokenizer.decode(result.sequences[0].tokens, skip_special_tokens=True)

    return await asyncio.gather(*(one(row) for row in rows))


def greedy_accuracy(sampler: Any, tokenizer: Any, rows: Sequence[Row],
                    max_tokens: int = 16) -> float:
    """Fraction of ``rows`` the sampler answers correctly with greedy decoding."""
    if not rows:
        return 0.0
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    completions = asyncio.run(_completions(sampler, tokenizer, rows, params))
    return sum(score(row, text) for row, text in zip(rows, completions, strict=True)) / len(rows)
