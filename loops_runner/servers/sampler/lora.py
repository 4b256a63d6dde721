"""LoRA adapters for the PyTorch engine: reading PEFT folders, applying many at once.

One forward pass can serve rows that use different adapters (the base model,
the live adapter, a pinned checkpoint): every targeted ``nn.Linear`` is wrapped
once in ``MultiLoraLinear``, which adds ``scale * B(A(x))`` for the rows of each
adapter named in the engine's current ``LoraBatch``. Adapters are immutable
objects; a request keeps a reference to the one it started with, so publishing a
new version never changes the weights under a request in flight.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# PEFT saves ``base_model.model.<module>.lora_A.weight`` (older versions put the
# adapter name before ``weight``).
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")

# Options that change what an adapter computes beyond plain LoRA; serving such
# an adapter as plain LoRA would silently produce wrong outputs, so it is refused.
_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA adapters",
    "modules_to_save": "adapters with modules_to_save (fully trained modules)",
    "lora_bias": "adapters with LoRA bias terms",
    "layer_replication": "adapters with layer replication",
    "trainable_token_indices": "adapters with trainable token indices",
    "target_parameters": "adapters targeting parameters instead of modules",
    "alora_invocation_tokens": "activated LoRA (aLoRA) adapters",
    "use_qalora": "QA-LoRA adapters",
}


class AdapterError(ValueError):
    """An adapter folder this engine cannot serve (the message says why)."""


@dataclass(frozen=True)
class LoraModuleWeights:
    a: torch.Tensor  # [rank, in_features]
    b: torch.Tensor  # [out_features, rank]
    scale: float


@dataclass(eq=False)
class LoraAdapter:
    """An adapter loaded on the engine's device; never mutated after loading."""

    key: str
    source: Path
    modules: dict[str, LoraModuleWeights]
    rank: int
    alpha: float
    nbytes: int
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"LoraAdapter({self.key!r}, rank={self.rank}, modules={len(self.modules)})"


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank/alpha patterns: a key matches a module name or its dotted suffix."""
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_adapter_config(directory: Path) -> dict[str, Any]:
    path = directory / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AdapterError(f"{directory} has no {ADAPTER_CONFIG}: not a PEFT adapter") from exc
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"only LoRA adapters can be served, {path} has peft_type {peft_type}")
    for option, what in _UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            raise AdapterError(f"{what} are not supported by this sampler ({option} is set)")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapters with bias={config['bias']!r} are not supported (need 'none')")
    if config.get("fan_in_fan_out"):
        raise AdapterError("fan_in_fan_out adapters (Conv1D layers) are not supported")
    return config


def load_peft_adapter(
    directory: Path,
    model: nn.Module,
    *,
    key: str,
    device: torch.device,
    dtype: torch.dtype,
) -> LoraAdapter:
    """Read a PEFT LoRA folder and check it against ``model``'s modules and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_adapter_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        # Never fall back to adapter_model.bin: unpickling files is code execution.
        raise AdapterError(f"{directory} has no {ADAPTER_WEIGHTS} (only safetensors are loaded)")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"cannot read {weights_path}: {exc}") from exc

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _KEY.match(name)
        if match is None:
            raise AdapterError(f"unsupported tensor {name!r} in {weights_path} "
                               "(only lora_A/lora_B weights of linear layers are served)")
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    if not pairs:
        raise AdapterError(f"{weights_path} holds no LoRA weights")

    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    use_rslora = bool(config.get("use_rslora", False))
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    named = dict(model.named_modules())
    modules: dict[str, LoraModuleWeights] = {}
    nbytes = 0
    max_rank = 0
    for module_name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise AdapterError(f"{module_name}: lora_A and lora_B must both be present")
        target = named.get(module_name)
        if isinstance(target, MultiLoraLinear):
            target = target.base
        if not isinstance(target, nn.Linear):
            raise AdapterError(f"adapter targets {module_name!r}, which is not a linear layer "
                               "of this base model (wrong base model?)")
        a, b = pair["A"], pair["B"]
        rank = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != rank \
                or a.shape[1] != target.in_features or b.shape[0] != target.out_features:
            raise AdapterError(
                f"{module_name}: LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit a "
                f"{target.in_features}->{target.out_features} layer (wrong base model?)")
        expected_rank = int(_pattern_value(rank_pattern, module_name, config.get("r", rank)))
        if expected_rank != rank:
            raise AdapterError(f"{module_name}: rank {rank} in the weights, "
                               f"{expected_rank} in {ADAPTER_CONFIG}")
        module_alpha = float(_pattern_value(alpha_pattern, module_name, alpha))
        scale = module_alpha / (math.sqrt(rank) if use_rslora else rank)
        if not all(torch.isfinite(t).all() for t in (a, b)):
            raise AdapterError(f"{module_name}: adapter weights contain NaN or infinity")
        a_dev = a.to(device=device, dtype=dtype).contiguous()
        b_dev = b.to(device=device, dtype=dtype).contiguous()
        modules[module_name] = LoraModuleWeights(a_dev, b_dev, scale)
        nbytes += a_dev.numel() * a_dev.element_size() + b_dev.numel() * b_dev.element_size()
        max_rank = max(max_rank, rank)
    return LoraAdapter(key=key, source=directory, modules=modules, rank=max_rank, alpha=alpha,
                       nbytes=nbytes, config=config)


@dataclass
class LoraBatch:
    """Which rows of the current forward use which adapter.

    ``groups`` holds ``(adapter, rows)``; ``rows is None`` means every row. The
    engine thread sets it before each forward; only that thread runs forwards.
    """

    groups: list[tuple[LoraAdapter, torch.Tensor | None]] = field(default_factory=list)


class MultiLoraLinear(nn.Module):
    """``base(x)`` plus, per adapter group, ``scale * B(A(x))`` on that group's rows.

    Rows of no group get exactly ``base(x)``, so the base model's numerics are
    untouched by wrapping. The order of operations matches PEFT's LoRA layer.
    """

    def __init__(self, base: nn.Linear, name: str, batch: LoraBatch) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.batch = batch

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for adapter, rows in self.batch.groups:
            weights = adapter.modules.get(self.name)
            if weights is None:
                continue
            if rows is None:
                out = out + F.linear(F.linear(x, weights.a), weights.b) * weights.scale
            else:
                delta = F.linear(F.linear(x.index_select(0, rows), weights.a), weights.b)
                out = out.index_add(0, rows, delta * weights.scale)
        return out


def wrap_targets(model: nn.Module, names: list[str], batch: LoraBatch) -> int:
    """Wrap the named linear layers (once each); returns how many were newly wrapped.

    Safe while another thread runs a forward: a wrapper with no group for its
    rows computes exactly what the plain layer did.
    """
    wrapped = 0
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        current = getattr(parent, attr)
        if isinstance(current, MultiLoraLinear):
            continue
        if not isinstance(current, nn.Linear):
            raise AdapterError(f"{name!r} is not a linear layer")
        setattr(parent, attr, MultiLoraLinear(current, name, batch))
        wrapped += 1
    return wrapped
