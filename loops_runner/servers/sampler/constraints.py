"""Structured outputs: ``regex`` and ``choice`` constraints (vLLM's field names).

A constrained sequence may only grow into text that can still match the
pattern: after the batch picks each row's scores (logits, or perturbed logits
for sampled rows), a constrained row walks its candidates from the best down
and takes the first one whose text keeps a partial match alive (the ``regex``
module's ``partial=True``). Walking the Gumbel-perturbed scores in order samples
exactly from the model's distribution restricted to the allowed tokens. The
end-of-sequence token is allowed once the text matches completely. Tokens that
end inside a multi-byte UTF-8 character are never taken (their text cannot be
checked yet), so constrained text uses whole-character tokens only.

Other kinds (``json``, ``grammar``, ``structural_tag``, ...) are refused by the
request validation, not silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import regex
import torch

from loops_runner.servers.sampler.detokenize import IncrementalText

SUPPORTED_KINDS = ("regex", "choice")
_CANDIDATE_WINDOWS = (8, 64, 512)


class ConstraintError(ValueError):
    pass


def compile_pattern(kind: str, value: Any) -> str:
    """The regex a ``structured_outputs`` entry stands for (checked, uncompiled)."""
    if kind == "choice":
        if not isinstance(value, list) or not value or \
                not all(isinstance(item, str) and item for item in value):
            raise ConstraintError("structured_outputs.choice must be a non-empty list of "
                                  "non-empty strings")
        pattern = "(?:" + "|".join(regex.escape(item) for item in value) + ")"
    elif kind == "regex":
        if not isinstance(value, str) or not value:
            raise ConstraintError("structured_outputs.regex must be a non-empty string")
        pattern = value
    else:
        raise ConstraintError(f"structured_outputs kind {kind!r} is not supported by this "
                              f"sampler (supported: {', '.join(SUPPORTED_KINDS)})")
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise ConstraintError(f"structured_outputs.{kind}: invalid pattern: {exc}") from exc
    return pattern


class RegexConstraint:
    """Per-sequence state: the text so far and the pattern it must keep matching."""

    def __init__(self, pattern: str, tokenizer: Any, eos_ids: Iterable[int]) -> None:
        self.pattern = regex.compile(pattern)
        self.text = IncrementalText(tokenizer)
        self.eos_ids = frozenset(eos_ids)

    def complete(self) -> bool:
        return self.pattern.fullmatch(self.text.text) is not None

    def _allowed(self, token: int, before: str) -> bool:
        if token in self.eos_ids:
            return self.complete()
        candidate = self.text.peek(token, before)
        # A token ending in an incomplete UTF-8 sequence cannot be judged, and
        # one that adds no text (a special token) cannot make progress.
        if candidate is None or candidate == self.text.text:
            return False
        return self.pattern.fullmatch(candidate, partial=True) is not None

    def pick(self, scores: torch.Tensor) -> int | None:
        """The best-scoring allowed token, or None when nothing can continue."""
        before = self.text.window_text()
        vocab = scores.shape[-1]
        checked = 0
        for window in (*_CANDIDATE_WINDOWS, vocab):
            size = min(window, vocab)
            if size <= checked:
                continue
            order = scores.topk(size).indices.tolist()
            for token in order[checked:]:
                if self._allowed(token, before):
                    return token
            checked = size
        return None

    def advance(self, token: int) -> None:
        self.text.push(token)
