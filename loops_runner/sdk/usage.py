"""Tokens this process sent to Loops servers: what a hosted run is billed on.

Every training and sampling client of the process adds to one set of
counters: ``trained`` (tokens of the datums sent to ``forward_backward``, the
custom loss's gradient pass included), ``prompt`` (prompt tokens of each
``sample`` / ``compute_logprobs`` request, counted once per request) and
``sampled`` (tokens of the completions returned). A reader takes a
``snapshot()`` and subtracts an earlier one: the runner logs the difference per
step. Clients pickled into other processes count there, not here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenCounts:
    trained: int = 0
    prompt: int = 0
    sampled: int = 0

    def __sub__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.trained - other.trained, self.prompt - other.prompt,
                           self.sampled - other.sampled)

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.trained + other.trained, self.prompt + other.prompt,
                           self.sampled + other.sampled)

    def as_dict(self) -> dict[str, int]:
        return {"trained": self.trained, "prompt": self.prompt, "sampled": self.sampled}


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = TokenCounts()

    def add(self, *, trained: int = 0, prompt: int = 0, sampled: int = 0) -> None:
        with self._lock:
            self._counts = self._counts + TokenCounts(trained, prompt, sampled)

    def snapshot(self) -> TokenCounts:
        with self._lock:
            return self._counts


_COUNTER = _Counter()
add_tokens = _COUNTER.add


def token_usage() -> TokenCounts:
    """The tokens every client of this process has trained on, prompted and sampled so far."""
    return _COUNTER.snapshot()
