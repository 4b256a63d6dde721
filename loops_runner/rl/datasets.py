"""Datasets of groups: what ``recipe.env=module:make_dataset`` returns.

A dataset factory is called as ``make_dataset(setup, **recipe.env_args)`` with a
:class:`DatasetSetup` (tokenizer, groups per batch, seed) and returns an
:class:`~loops_runner.rl.types.RLDataset`. :class:`BuilderListDataset` covers the
common case: a list of group builders, shuffled per epoch and cut into batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loops_runner.rl.types import EnvGroupBuilder, RLDataset


@dataclass(frozen=True)
class DatasetSetup:
    """What a dataset factory gets from the recipe."""

    tokenizer: Any
    groups_per_batch: int
    seed: int


class BuilderListDataset(RLDataset):
    """Fixed group builders in a seeded order, cut into batches of ``groups_per_batch``."""

    def __init__(self, builders: Sequence[EnvGroupBuilder], groups_per_batch: int,
                 seed: int) -> None:
        if not builders:
            raise ValueError("the dataset has no groups")
        order = list(range(len(builders)))
        random.Random(f"{seed}-rl-order").shuffle(order)
        self.builders = [builders[i] for i in order]
        self.groups_per_batch = groups_per_batch

    def __len__(self) -> int:
        return max(1, len(self.builders) // self.groups_per_batch)

    def get_batch(self, index: int) -> list[EnvGroupBuilder]:
        start = (index % len(self)) * self.groups_per_batch
        return [self.builders[(start + k) % len(self.builders)]
                for k in range(self.groups_per_batch)]
