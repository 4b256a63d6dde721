"""Batches for training: shuffled each epoch, grouped by length to cut padding."""

from __future__ import annotations

import random


def length_grouped_batches(lengths: list[int], batch_size: int, window: int,
                           rng: random.Random) -> list[list[int]]:
    """Index batches: shuffle, sort windows of ``window`` batches by length, shuffle batches.

    Sequences of similar length end up together (less padding on the trainer),
    while the order of batches stays random. ``window=1`` is a plain shuffle.
    Deterministic for a given RNG state.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = max(1, window) * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        if window > 1:
            chunk.sort(key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return [batch for batch in batches if len(batch) == batch_size] or batches[:1]
