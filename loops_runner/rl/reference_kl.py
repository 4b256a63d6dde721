"""An optional KL penalty against the base model, folded into per-token advantages.

The reference logprobs come from a base-model sampler's ``compute_logprobs``
(no second trainer needed). Each sampled token's advantage is lowered by
``coef * (sampler logprob - reference logprob)``, the per-token estimate of
KL(policy || reference), which keeps the policy near the model it started from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from loops_runner.rl.datums import TokenSequence
from loops_runner.wire import ModelInput


async def reference_logprobs_D(reference: Any,
                               sequences_D: Sequence[TokenSequence]) -> list[list[float | None]]:
    """The reference model's logprob of every token of every sequence (index 0: None)."""
    return list(await asyncio.gather(*(
        reference.compute_logprobs_async(ModelInput.from_ints(s.tokens)) for s in sequences_D)))


def apply_kl_penalty(sequences_D: Sequence[TokenSequence],
                     reference_D: Sequence[Sequence[float | None]], coef: float) -> float:
    """Lower each sampled token's advantage by ``coef`` × its KL estimate; return the mean KL."""
    total, count = 0.0, 0
    for sequence, reference_T in zip(sequences_D, reference_D, strict=True):
        for t, (weight, reference_lp) in enumerate(zip(sequence.weights, reference_T,
                                                       strict=True)):
            if not weight or reference_lp is None:
                continue
            kl = sequence.logprobs[t] - reference_lp
            sequence.advantages[t] -= coef * kl
            total += kl
            count += 1
    return total / count if count else 0.0
