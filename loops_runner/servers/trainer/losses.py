"""The loss functions of spec section 5, on flattened positions.

The engine hands every loss the positions of one micro-batch that have a
target, flattened across datums (``P`` positions, ``K`` targets each):

* ``lp``: ``(P, K)`` log-probabilities of the targets under the current adapter
  (with gradient when training);
* a :class:`FlatInputs` with the matching per-position inputs, already
  sanitised (masked positions hold finite zeros, never NaN, so ``0 * x``
  cannot poison a sum).

Each loss returns the **sum** of its per-token (DPO: per-pair) losses, the
number of normalisation units it covered (active tokens; pairs for DPO) and
metric sums. Normalisation by that count is deferred to ``optim_step``
(spec 4.8), which is what makes chunked submissions give the same update.

Notation as in the spec: ``q`` = sampler logprobs, ``A`` = advantages,
``r = exp(lp - q)``; ``loss = -objective``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

# -- what each loss needs (used by validation too) -------------------------------

LOSS_REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens",),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
    "dpo": ("target_tokens", "weights", "ref_logprobs"),
    "dppo": ("target_tokens", "logprobs", "advantages"),
}
POLICY_LOSSES = frozenset({"importance_sampling", "ppo", "cispo", "dro", "dppo"})

# Defaults of every loss_fn_config key; a key not listed for a loss is refused.
LOSS_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "cross_entropy": {"skip_token_normalization": False},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "dro": {"beta": 0.05},
    "dpo": {"beta": 0.1, "label_smoothing": 0.0},
    "dppo": {"dppo_mask_high": 0.2, "dppo_mask_low": 0.2, "adv_tau": 1.0, "kl_tau": 1e-3},
}


@dataclass
class FlatInputs:
    """Per-position inputs of one micro-batch, aligned with ``lp``'s rows."""

    seg: torch.Tensor  # (P,) index of the owning datum within the micro-batch
    num_datums: int
    valid: torch.Tensor  # (P, K) bool: target >= 0
    weights: torch.Tensor  # (P, K) float: 0 where not valid; default 1 where valid
    mask: torch.Tensor  # (P,) float: the optional multiplicative mask, default 1
    logprobs: torch.Tensor | None = None  # (P,) sampler logprobs q
    advantages: torch.Tensor | None = None  # (P,) broadcast per datum
    ref_logprobs: torch.Tensor | None = None  # (P,)


@dataclass
class LossPart:
    """One micro-batch's contribution."""

    loss_sum: torch.Tensor  # scalar; backward() of it accumulates the summed gradient
    count: float  # normalisation units: active tokens, or pairs for DPO
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (sum, denom)


def merge_stats(into: dict[str, list[float]], stats: dict[str, tuple[float, float]]) -> None:
    for name, (total, denom) in stats.items():
        slot = into.setdefault(name, [0.0, 0.0])
        slot[0] += total
        slot[1] += denom


def finish_stats(stats: dict[str, list[float]]) -> dict[str, float]:
    return {name: (total / denom if denom > 0 else 0.0) for name, (total, denom) in stats.items()}


def policy_active(valid: torch.Tensor, coef: torch.Tensor,
                  advantages: torch.Tensor) -> torch.Tensor:
    """Active token of a policy loss (spec 4.8): a target, nonzero weight, nonzero advantage."""
    return valid & (coef != 0) & (advantages != 0)


def compute_loss(loss_fn: str, lp: torch.Tensor, flat: FlatInputs,
                 config: dict[str, Any]) -> LossPart:
    if loss_fn == "cross_entropy":
        return _cross_entropy(lp, flat)
    if loss_fn == "dpo":
        return _dpo(lp, flat, config)
    if loss_fn in POLICY_LOSSES:
        return _policy(loss_fn, lp, flat, config)
    raise ValueError(f"unknown loss_fn {loss_fn!r}")


def _cross_entropy(lp: torch.Tensor, flat: FlatInputs) -> LossPart:
    # l_t = -sum_k w_tk * lp_tk; a position counts once however many of its K
    # targets are active, so (N, K) distillation targets normalise per token.
    coef = flat.weights * flat.mask.unsqueeze(1)
    loss_sum = -(coef * lp).sum()
    count = float(((coef != 0) & flat.valid).any(dim=1).sum())
    value = float(loss_sum.detach())
    return LossPart(loss_sum, count, {"loss": (value, count)})


def _policy(loss_fn: str, lp_k: torch.Tensor, flat: FlatInputs,
            config: dict[str, Any]) -> LossPart:
    assert flat.logprobs is not None and flat.advantages is not None
    coef_all = flat.weights[:, 0] * flat.mask
    active = policy_active(flat.valid[:, 0], coef_all, flat.advantages)
    lp = lp_k[:, 0][active]
    q = flat.logprobs[active]
    adv = flat.advantages[active]
    coef = coef_all[active]
    count = float(active.sum())
    log_ratio = lp - q
    ratio = torch.exp(log_ratio)
    stats: dict[str, tuple[float, float]] = {}

    if loss_fn == "importance_sampling":
        per_token = -ratio * adv
    elif loss_fn == "ppo":
        lo, hi = float(config["clip_low_threshold"]), float(config["clip_high_threshold"])
        unclipped = ratio * adv
        clipped = torch.clamp(ratio, lo, hi) * adv
        per_token = -torch.minimum(unclipped, clipped)
        took_clip = (clipped < unclipped).float()
        stats["ppo/clip_fraction"] = (float(took_clip.sum()), count)
    elif loss_fn == "cispo":
        lo, hi = float(config["clip_low_threshold"]), float(config["clip_high_threshold"])
        clipped_ratio = torch.clamp(ratio, lo, hi).detach()
        per_token = -clipped_ratio * lp * adv
        outside = ((ratio < lo) | (ratio > hi)).float()
        stats["cispo/clip_fraction"] = (float(outside.sum()), count)
    elif loss_fn == "dro":
        beta = float(config["beta"])
        per_token = -(lp * adv - 0.5 * beta * log_ratio.pow(2))
    elif loss_fn == "dppo":
        per_token, dppo_stats = _dppo(lp, q, adv, log_ratio, ratio, config)
        stats.update({name: (value, count) for name, value in dppo_stats.items()})
    else:  # pragma: no cover - compute_loss dispatches only known names
        raise ValueError(f"unknown policy loss {loss_fn!r}")

    loss_sum = (coef * per_token).sum()
    stats["loss"] = (float(loss_sum.detach()), count)
    with torch.no_grad():
        stats["ratio_mean"] = (float(ratio.sum()), count)
        # k3 estimator of KL(sampler || learner) per token: r - log r - 1 >= 0.
        stats["mismatch_kl"] = (float((ratio - log_ratio - 1).sum()), count)
    return LossPart(loss_sum, count, stats)


def _dppo(lp: torch.Tensor, q: torch.Tensor, adv: torch.Tensor, log_ratio: torch.Tensor,
          ratio: torch.Tensor, config: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """Divergence-PPO with a binary total-variation trust-region mask (spec 5.8)."""
    mask_high, mask_low = float(config["dppo_mask_high"]), float(config["dppo_mask_low"])
    adv_tau, kl_tau = float(config["adv_tau"]), float(config["kl_tau"])
    with torch.no_grad():
        drift = torch.exp(lp) - torch.exp(q)  # probability change of the sampled token
        masked_high = (adv > 0) & (drift > mask_high)
        masked_low = (adv < 0) & (drift < -mask_low)
        keep = (~(masked_high | masked_low)).to(lp.dtype)
    per_token = -keep * adv_tau * adv * ratio + kl_tau * log_ratio.pow(2)
    stats = {
        "is_masked": float((masked_high | masked_low).sum()),
        "is_masked_high": float(masked_high.sum()),
        "is_masked_low": float(masked_low.sum()),
        # Marks which DPPO variant this server implements (spec Q11).
        "dppo/binary_tv_mask": float(lp.numel()),
    }
    return per_token, stats


def _dpo(lp_k: torch.Tensor, flat: FlatInputs, config: dict[str, Any]) -> LossPart:
    assert flat.ref_logprobs is not None
    beta = float(config["beta"])
    eps = float(config["label_smoothing"])
    coef = flat.weights[:, 0] * flat.mask
    per_position = coef * (lp_k[:, 0] - flat.ref_logprobs)
    # s_i = sum_t w_t (lp_t - ref_t) per sequence; rows are (chosen, rejected) pairs.
    sums = torch.zeros(flat.num_datums, dtype=lp_k.dtype, device=lp_k.device)
    sums = sums.index_add(0, flat.seg, per_position)
    chosen, rejected = sums[0::2], sums[1::2]
    margin = beta * (chosen - rejected)
    losses = -(1.0 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    pairs = float(margin.numel())
    with torch.no_grad():
        stats = {
            "loss": (float(losses.sum()), pairs),
            "dpo/accuracy": (float((margin > 0).float().sum()), pairs),
            "dpo/margin": (float((margin / beta).sum()), pairs),
            "dpo/chosen_reward": (float((beta * chosen).sum()), pairs),
            "dpo/rejected_reward": (float((beta * rejected).sum()), pairs),
        }
    return LossPart(losses.sum(), pairs, stats)
