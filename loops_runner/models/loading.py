"""Loading base models and tokenizers for the engines (imports torch: servers only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loops_runner.models.registry import ResolvedModel, resolve_model


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU (bf16 matmuls are far slower there), bf16 on capable GPUs."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ValueError(f"dtype must be auto or one of {sorted(choices)}, got {dtype!r}")
    return choices[dtype]


@dataclass
class LoadedModel:
    resolved: ResolvedModel
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def max_context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def load_base_model(
    base_model: str,
    *,
    home: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
) -> LoadedModel:
    """Resolve ``base_model`` (registry name, directory or HF id) and load it frozen."""
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(base_model, home)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    model = AutoModelForCausalLM.from_pretrained(resolved.load_path, dtype=torch_dtype)
    model.to(torch_device)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    tokenizer = load_tokenizer(resolved.load_path)
    return LoadedModel(resolved, model, tokenizer, torch_device, torch_dtype)
