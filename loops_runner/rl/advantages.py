"""Group-centred advantages: each episode's reward against its group's mean.

Comparing samples of the same prompt removes the prompt's difficulty from the
signal without a value model (GRPO-style). A group whose rewards are all equal
carries no signal and is dropped; failed episodes are left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Rewards closer than this count as equal (floating-point noise in scorers).
CONSTANT_TOLERANCE = 1e-9


def is_constant(rewards_G: Sequence[float]) -> bool:
    """True when the finite rewards of a group carry no learning signal."""
    finite = [r for r in rewards_G if math.isfinite(r)]
    return len(finite) < 2 or max(finite) - min(finite) <= CONSTANT_TOLERANCE


def group_advantages(rewards_G: Sequence[float], *, normalize_std: bool = False,
                     std_epsilon: float = 1e-6) -> list[float]:
    """``reward - mean`` (optionally ``/ std``) per episode; 0 for failed (NaN) episodes."""
    finite = [r for r in rewards_G if math.isfinite(r)]
    if not finite:
        return [0.0] * len(rewards_G)
    mean = sum(finite) / len(finite)
    scale = 1.0
    if normalize_std:
        std = math.sqrt(sum((r - mean) ** 2 for r in finite) / len(finite))
        scale = 1.0 / (std + std_epsilon)
    return [(r - mean) * scale if math.isfinite(r) else 0.0 for r in rewards_G]
