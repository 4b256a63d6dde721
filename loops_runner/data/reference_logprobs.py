"""Log-probabilities of a frozen reference policy, computed once and cached next to the run.

DPO compares the policy with the base model on the same tokens at every step;
the base never changes, so its log-probabilities are computed once per
distinct sequence (through a sampler's ``compute_logprobs``) and stored in the
run dir under a key of model and tokens. The tokens already encode the data
and the rendering (chat template, truncation), so a changed dataset or
template gets a new file, while a second epoch or a resumed run reads the
cached one and makes no reference call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loops_runner.sdk import ModelInput
from loops_runner.storage.atomic import atomic_write_json, read_json

CACHE_PREFIX = "reference-logprobs-"
# Scoring requests in flight at once; the sampler batches concurrent requests.
CONCURRENCY = 32


@dataclass(frozen=True)
class ReferenceLogprobs:
    by_sequence: dict[tuple[int, ...], list[float]]  # logprob of token i given tokens < i
    computed: int  # sequences scored by the reference model in this call (0 = all cached)
    path: Path

    def targets(self, tokens: Sequence[int]) -> list[float]:
        """Aligned with next-token targets: entry t is the logprob of ``tokens[t + 1]``."""
        return self.by_sequence[tuple(tokens)][1:]


def cache_key(model: str, sequences: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256(model.encode())
    for tokens in sequences:
        digest.update(json.dumps(list(tokens)).encode())
    return digest.hexdigest()[:20]


async def _score_all(sampler: Any, sequences: list[tuple[int, ...]]) -> list[list[float | None]]:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def score(tokens: tuple[int, ...]) -> list[float | None]:
        async with limit:
            return await sampler.compute_logprobs_async(ModelInput.from_ints(list(tokens)))

    return await asyncio.gather(*(score(tokens) for tokens in sequences))


async def reference_logprobs(model: str, sequences: Sequence[Sequence[int]], cache_dir: Path,
                       sampler: Callable[[], Any]) -> ReferenceLogprobs:
    """Reference logprobs of every sequence, from the cache or computed (then cached).

    ``sampler`` is called only on a cache miss, so a cached run provisions no sampler.
    """
    distinct = sorted({tuple(s) for s in sequences})
    path = cache_dir / f"{CACHE_PREFIX}{cache_key(model, distinct)}.json"
    cached = read_json(path)
    if cached is not None and cached.get("model") == model and \
            len(cached.get("logprobs", [])) == len(distinct):
        return ReferenceLogprobs(dict(zip(distinct, cached["logprobs"], strict=True)), 0, path)
    scored = await _score_all(sampler(), distinct)
    # Position 0 has no logprob (nothing precedes it); no target ever asks for it.
    values = [[0.0 if v is None else float(v) for v in row] for row in scored]
    atomic_write_json(path, {"model": model, "sequences": len(distinct), "logprobs": values})
    return ReferenceLogprobs(dict(zip(distinct, values, strict=True)), len(distinct), path)
