"""AdamW with decoupled weight decay, keyed by parameter name.

Hyper-parameters arrive with every ``optim_step`` (the learning rate may
change each step), so the optimizer is just state (two moments per
parameter and a step count) plus one pure update function. Keying the state
by the adapter's parameter names makes it trivially saveable to safetensors
and loadable into another run's adapter of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from loops_runner.wire.training import AdamParams


@dataclass
class AdamState:
    step: int = 0
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)


def global_grad_norm(grads: list[torch.Tensor]) -> float:
    if not grads:
        return 0.0
    norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    return float(torch.linalg.vector_norm(norms))


@torch.no_grad()
def adamw_step(
    params: dict[str, torch.nn.Parameter],
    grads: dict[str, torch.Tensor],
    state: AdamState,
    hp: AdamParams,
) -> None:
    """One AdamW update of ``params`` from ``grads`` (already normalised and clipped).

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    p = p (1 - lr wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """
    state.step += 1
    t = state.step
    lr = hp.learning_rate
    bias1 = 1.0 - hp.beta1**t
    bias2_sqrt = math.sqrt(1.0 - hp.beta2**t)
    for name, param in params.items():
        grad = grads[name]
        exp_avg = state.exp_avg.get(name)
        if exp_avg is None:
            exp_avg = state.exp_avg[name] = torch.zeros_like(param)
            state.exp_avg_sq[name] = torch.zeros_like(param)
        exp_avg_sq = state.exp_avg_sq[name]
        if hp.weight_decay:
            param.mul_(1.0 - lr * hp.weight_decay)
        exp_avg.mul_(hp.beta1).add_(grad, alpha=1.0 - hp.beta1)
        exp_avg_sq.mul_(hp.beta2).addcmul_(grad, grad, value=1.0 - hp.beta2)
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(hp.eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias1)
