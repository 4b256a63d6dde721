"""Direct PyTorch computations of spec section 5, independent of the server's code.

The tests compare the gradient the server accumulates with the gradient of
these formulas, computed on an in-process copy of the same base model and
adapter (plain PEFT, one unpadded sequence at a time, full log-softmax).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ReferenceModel:
    """The tiny base model with one PEFT adapter whose weights tests overwrite."""

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float) -> None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=PROJECTIONS,
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(base, config)
        self.params = {name.replace(".default.", "."): p
                       for name, p in self.model.named_parameters() if ".default." in name}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        assert set(tensors) == set(self.params), "adapter layout differs from the server's"
        with torch.no_grad():
            for key, param in self.params.items():
                param.copy_(tensors[key])
                param.grad = None

    def logprobs(self, tokens: list[int], targets: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` log-probabilities of ``targets`` (negatives clamped) with gradient."""
        logits = self.model(input_ids=torch.tensor([tokens])).logits[0].float()
        logp = F.log_softmax(logits, dim=-1)
        return logp.gather(1, targets.clamp(min=0))

    def gradients(self) -> dict[str, torch.Tensor]:
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                for k, p in self.params.items()}


def _floats(values: list[Any] | None, n: int, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((n,), default)
    return torch.tensor([math.nan if v is None else float(v) for v in values])


def spec_loss(model: ReferenceModel, data: list[dict[str, Any]], loss_fn: str,
              config: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """The summed loss of spec section 5 over ``data`` (wire datums) and its count."""
    total = torch.zeros(())
    count = 0.0
    seq_sums: list[torch.Tensor] = []
    for item in data:
        tokens = item["model_input"]["chunks"][0]["tokens"]
        inputs = item["loss_fn_inputs"]
        tt = inputs["target_tokens"]
        target = torch.tensor(tt["data"]).reshape(tt["shape"])
        target2 = target if target.dim() == 2 else target.unsqueeze(1)
        n = len(tokens)
        lp = model.logprobs(tokens, target2)
        valid = target2 >= 0
        if "weights" in inputs:
            w = _floats(inputs["weights"]["data"], target2.numel(), 1.0).reshape(target2.shape)
        else:
            w = valid.float()
        w = torch.where(valid, w, torch.zeros_like(w))
        mask = _floats(inputs["mask"]["data"] if "mask" in inputs else None, n, 1.0)
        if loss_fn == "cross_entropy":
            coef = w * mask.unsqueeze(1)
            total = total - (coef * lp).sum()
            count += float(((coef != 0) & valid).any(dim=1).sum())
            continue
        if loss_fn == "dpo":
            ref = _floats(inputs["ref_logprobs"]["data"], n, 0.0)
            use = valid[:, 0] & (w[:, 0] != 0)
            terms = torch.where(use, w[:, 0] * mask * (lp[:, 0] - ref), torch.zeros(n))
            seq_sums.append(terms.sum())
            continue
        adv = _floats(inputs["advantages"]["data"], 0, 0.0)
        adv = adv.expand(n) if adv.numel() == 1 else adv
        q = _floats(inputs["logprobs"]["data"], n, 0.0)
        coef = w[:, 0] * mask
        active = valid[:, 0] & (coef != 0) & (adv != 0)
        count += float(active.sum())
        lp1 = lp[:, 0][active]
        a, qa, c = adv[active], q[active], coef[active]
        ratio = torch.exp(lp1 - qa)
        if loss_fn == "importance_sampling":
            per = -ratio * a
        elif loss_fn == "ppo":
            lo, hi = config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2)
            per = -torch.minimum(ratio * a, torch.clamp(ratio, lo, hi) * a)
        elif loss_fn == "cispo":
            lo, hi = config.get("clip_low_threshold", 0.8), config.get("clip_high_threshold", 1.2)
            per = -torch.clamp(ratio, lo, hi).detach() * lp1 * a
        elif loss_fn == "dro":
            beta = config.get("beta", 0.05)
            per = -(lp1 * a - beta / 2 * (lp1 - qa) ** 2)
        elif loss_fn == "dppo":
            high, low = config.get("dppo_mask_high", 0.2), config.get("dppo_mask_low", 0.2)
            adv_tau, kl_tau = config.get("adv_tau", 1.0), config.get("kl_tau", 1e-3)
            drift = (torch.exp(lp1) - torch.exp(qa)).detach()
            dropped = ((a > 0) & (drift > high)) | ((a < 0) & (drift < -low))
            keep = (~dropped).float()
            per = -keep * adv_tau * a * ratio + kl_tau * (lp1 - qa) ** 2
        else:
            raise ValueError(loss_fn)
        total = total + (c * per).sum()
    if loss_fn == "dpo":
        beta, eps = config.get("beta", 0.1), config.get("label_smoothing", 0.0)
        for chosen, rejected in zip(seq_sums[0::2], seq_sums[1::2], strict=True):
            m = beta * (chosen - rejected)
            total = total - (1 - eps) * F.logsigmoid(m) - eps * F.logsigmoid(-m)
            count += 1
    return total, count


def relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert set(got) == set(want)
    diff = torch.sqrt(sum(((got[k].double() - want[k].double()) ** 2).sum() for k in want))
    norm = torch.sqrt(sum((want[k].double() ** 2).sum() for k in want))
    return float(diff / norm)
