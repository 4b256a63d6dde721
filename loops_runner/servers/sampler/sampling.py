"""Choosing the next token for every row of a batch, each row with its own settings.

Sampling uses the Gumbel-max form: ``argmax(filtered_logits / T + G)`` with
``G = -log(-log(U))`` and ``U`` drawn from the row's own generator, which is
seeded from the request's seed and the choice index. Each sampled step draws
exactly ``vocab`` uniforms from that generator, so a row's tokens depend only
on its seed, its request and the weights, never on which other rows share the
batch. Greedy rows (temperature 0) take the argmax and draw nothing.

Penalties and ``logit_bias`` (``penalize``) change the logits the choice is
made from, for greedy and sampled rows alike, and come before temperature, as
in OpenAI's and vLLM's samplers. They only count the completion's own tokens.

The log-probability reported for a token is that of the model's raw
distribution (before penalties, bias, temperature, top-k and top-p), as vLLM
reports by default and as RL losses expect for importance ratios at
temperature 1.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

_MASK_64 = (1 << 64) - 1
# Temperatures below this are greedy (as in vLLM): dividing logits by them
# would overflow to inf and make the argmax arbitrary.
GREEDY_BELOW = 1e-5


def choice_seed(seed: int | None, choice: int) -> int:
    """The generator seed of choice ``choice`` of a request (random when unseeded)."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    digest = hashlib.blake2b(f"{seed & _MASK_64}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class RowSampling:
    """Per-row settings; ``generator`` is None for greedy rows."""

    temperature: float
    top_p: float
    top_k: int  # 0 = off
    generator: torch.Generator | None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _filter_top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor,
                        top_p: torch.Tensor) -> torch.Tensor:
    """Keep each row's top-k, then the smallest prefix whose mass reaches top-p."""
    vocab = scaled.shape[-1]
    ordered, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)
    limit = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    keep = ranks[None, :] < limit[:, None]
    if bool((top_p < 1.0).any()):
        probs = torch.softmax(ordered.masked_fill(~keep, float("-inf")), dim=-1)
        before = probs.cumsum(dim=-1) - probs
        # The first token always stays (``before`` is 0 there and top_p > 0).
        keep &= before < top_p[:, None]
    filtered = ordered.masked_fill(~keep, float("-inf"))
    return torch.empty_like(scaled).scatter_(-1, order, filtered)


def penalize(logits: torch.Tensor, rows: list[RowSampling],
             generated: list[list[int]]) -> torch.Tensor:
    """Logits with each row's bias added and its penalties subtracted.

    ``generated[i]`` is row i's completion so far. Returns ``logits`` itself
    when no row adjusts anything (the common case costs nothing).
    """
    adjusted_rows = [i for i, row in enumerate(rows) if row.adjusts_logits]
    if not adjusted_rows:
        return logits
    adjusted = logits.float().clone()
    vocab = logits.shape[-1]
    for i in adjusted_rows:
        row = rows[i]
        if row.logit_bias:
            ids = torch.tensor([token for token, _ in row.logit_bias], device=logits.device)
            bias = torch.tensor([value for _, value in row.logit_bias], device=logits.device)
            adjusted[i].index_add_(0, ids, bias)
        if generated[i] and (row.presence_penalty or row.frequency_penalty):
            counts = torch.bincount(torch.tensor(generated[i], device=logits.device),
                                    minlength=vocab)[:vocab].float()
            adjusted[i] -= row.frequency_penalty * counts \
                + row.presence_penalty * (counts > 0).float()
    return adjusted


def choose(logits: torch.Tensor, rows: list[RowSampling]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(tokens [B], scores [B, V])``.

    ``scores`` is what the choice maximised (raw logits for greedy rows, filtered
    and perturbed logits for sampled rows), so a constrained row can walk it
    in descending order to the best allowed token and still sample exactly
    from the constrained distribution.
    """
    logits = logits.float()
    sampled = [index for index, row in enumerate(rows) if row.generator is not None]
    if not sampled:
        return logits.argmax(dim=-1), logits
    scores = logits.clone()
    device = logits.device
    index = torch.tensor(sampled, device=device)
    picked = [rows[i] for i in sampled]
    temperature = torch.tensor([row.temperature for row in picked], device=device)
    scaled = logits.index_select(0, index) / temperature[:, None]
    if any(row.top_k > 0 or row.top_p < 1.0 for row in picked):
        top_k = torch.tensor([row.top_k for row in picked], device=device)
        top_p = torch.tensor([row.top_p for row in picked], device=device)
        scaled = _filter_top_k_top_p(scaled, top_k, top_p)
    vocab = logits.shape[-1]
    uniform = torch.stack([
        torch.rand(vocab, generator=row.generator, device=device) for row in picked
    ])
    gumbel = -torch.log(-torch.log(uniform))
    scores.index_copy_(0, index, scaled + gumbel)
    return scores.argmax(dim=-1), scores
