"""Micro-batch planning: bounded memory whatever the request size, little padding.

A request's datums are split into micro-batches whose padded size
(``rows * longest row``) stays under a token budget. Units (single datums, or
DPO's chosen/rejected pairs, which must share a micro-batch because the pair
loss couples them) are sorted by length first, so each micro-batch holds
sequences of similar length and padding waste stays small. A unit longer than
the budget on its own still runs, alone (the model's context limit bounds it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["grouped", "single"]
TOKEN_BUDGET_ENV = "LOOPS_TRAINER_TOKEN_BUDGET"
MIN_BUDGET = 2048
MAX_BUDGET = 16384
# Rough cap on the bytes of fp32 logits (+ softmax for backward) per micro-batch.
LOGITS_BYTES_TARGET = 2_000_000_000


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
) -> list[MicroBatch]:
    """Group datum indices into micro-batches.

    ``unit_size`` consecutive datums form an indivisible unit (2 for DPO).
    ``strategy="single"`` puts everything in one batch padded to the longest
    row (what a naive loop does; kept for the benchmark).
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
    batches: list[MicroBatch] = []
    current: list[int] = []
    current_max = 0
    for u in order:
        rows_after = len(current) + unit_size
        width = max(current_max, unit_len[u])
        if current and rows_after * width > token_budget:
            batches.append(MicroBatch(tuple(current), current_max))
            current, current_max = [], 0
            width = unit_len[u]
        current.extend(units[u])
        current_max = width
    if current:
        batches.append(MicroBatch(tuple(current), current_max))
    return batches
