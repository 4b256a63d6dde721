"""Micro-batch planning: bounded memory whatever the request size, little padding.

A request's datums are split into micro-batches whose padded size
(``rows * longest row``) stays under a token budget. Units (single datums, or
DPO's chosen/rejected pairs, which must share a micro-batch because the pair
loss couples them) are sorted by length, then cut into contiguous groups that
minimise padding plus a per-micro-batch overhead, so each micro-batch holds
sequences of similar length. A unit longer than the budget on its own still
runs, alone (the model's context limit bounds it).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Strategy = Literal["grouped", "single"]
TOKEN_BUDGET_ENV = "LOOPS_TRAINER_TOKEN_BUDGET"
MIN_BUDGET = 2048
MAX_BUDGET = 16384
# Rough cap on the bytes of fp32 logits (+ softmax for backward) per micro-batch.
LOGITS_BYTES_TARGET = 2_000_000_000
# Fixed cost of one more micro-batch, in padded-token equivalents (kernel
# launches, Python); small on CPU, larger on GPUs where big batches pay off.
DEFAULT_BATCH_OVERHEAD_TOKENS = 128
CUDA_BATCH_OVERHEAD_TOKENS = 2048


@dataclass(frozen=True)
class MicroBatch:
    indices: tuple[int, ...]  # datum indices, in layout order (pairs stay adjacent)
    max_len: int

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * self.max_len


def default_token_budget(vocab_size: int) -> int:
    """Padded tokens per micro-batch: ``$LOOPS_TRAINER_TOKEN_BUDGET``, else sized so the
    fp32 logits of a micro-batch stay around 2 GB (16k tokens for small vocabularies)."""
    configured = os.environ.get(TOKEN_BUDGET_ENV)
    if configured:
        value = int(configured)
        if value < 1:
            raise ValueError(f"{TOKEN_BUDGET_ENV} must be >= 1, got {value}")
        return value
    by_vocab = LOGITS_BYTES_TARGET // max(1, vocab_size * 4 * 3)
    return int(max(MIN_BUDGET, min(MAX_BUDGET, by_vocab)))


def plan_micro_batches(
    lengths: Sequence[int],
    token_budget: int,
    *,
    unit_size: int = 1,
    strategy: Strategy = "grouped",
    batch_overhead_tokens: int = DEFAULT_BATCH_OVERHEAD_TOKENS,
) -> list[MicroBatch]:
    """Group datum indices into micro-batches.

    ``unit_size`` consecutive datums form an indivisible unit (2 for DPO).
    ``"grouped"`` sorts units by length and splits them into contiguous runs
    minimising ``padded tokens + batch_overhead_tokens * micro-batches`` (the
    fixed cost of one more forward/backward, in token equivalents), with no
    micro-batch above ``token_budget`` padded tokens unless a single unit is.
    ``"single"`` puts everything in one batch padded to the longest row (what
    a naive loop does; kept for the benchmark).
    """
    if not lengths:
        return []
    if len(lengths) % unit_size:
        raise ValueError(f"{len(lengths)} datums do not form units of {unit_size}")
    if strategy == "single":
        return [MicroBatch(tuple(range(len(lengths))), max(lengths))]
    units = [tuple(range(start, start + unit_size)) for start in range(0, len(lengths), unit_size)]
    unit_len = [max(lengths[i] for i in unit) for unit in units]
    # Longest first; ties keep request order so plans are deterministic.
    order = sorted(range(len(units)), key=lambda u: (-unit_len[u], u))
    widths = np.array([unit_len[u] for u in order], dtype=np.float64)
    cuts = _optimal_cuts(widths, unit_size, token_budget, batch_overhead_tokens)
    batches = []
    for start, end in itertools.pairwise(cuts):
        indices = tuple(i for u in order[start:end] for i in units[u])
        batches.append(MicroBatch(indices, int(widths[start])))
    return batches


def _optimal_cuts(widths: np.ndarray, unit_size: int, budget: int, overhead: int) -> list[int]:
    """Boundaries of the cheapest split of descending ``widths`` into contiguous batches.

    A batch of units ``i..j-1`` is padded to ``widths[i]`` (the longest), so it
    costs ``(j - i) * unit_size * widths[i] + overhead``. Dynamic programming
    over the end index, vectorised over the start index: O(n^2) numpy work,
    well under a second for thousands of sequences.
    """
    n = len(widths)
    best = np.zeros(n + 1)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        rows = (end - np.arange(end)) * unit_size
        padded = rows * widths[:end]
        cost = best[:end] + padded + overhead
        cost[:-1][padded[:-1] > budget] = np.inf  # a lone unit always runs
        start = int(np.argmin(cost))
        best[end] = cost[start]
        start_of[end] = start
    cuts = [n]
    while cuts[-1] > 0:
        cuts.append(int(start_of[cuts[-1]]))
    return cuts[::-1]
