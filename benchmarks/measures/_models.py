"""Benchmark models beyond ``tiny``: a ~40M-parameter Qwen3 with random weights, built here.

The trainer's per-step costs (HTTP, JSON, Python) weigh most on a model as
small as ``tiny``; a model ~30x larger shows whether the matmuls dominate as
they do on real models. No download: the config is Qwen3's shape scaled down,
the weights are seeded random numbers, the tokenizer is ``tiny``'s (so token
ids and chat rendering are the same), and the folder loads by path like any
local model directory (``--base-model <dir>``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock

BUILD_VERSION = 1
SEED = 40
MARKER = "loops_bench_model.json"
QWEN3_40M = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
# Files of tiny's folder that describe the tokenizer and chat template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def qwen3_40m_dir(home: Path) -> Path:
    return home / "models" / f"bench-qwen3-40m-v{BUILD_VERSION}"


def prepare_qwen3_40m(home: Path) -> Path:
    """Build the model into ``home`` unless it is there already; return its directory."""
    target = qwen3_40m_dir(home)
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=".bench-build-", dir=target.parent))
        try:
            _build(home, staging)
            staging.chmod(0o755)
            staging.rename(target)  # atomic: readers never see half a model
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _build(home: Path, directory: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from loops_runner.models import tiny

    tiny_dir = tiny.prepare(home)
    tiny_config = json.loads((tiny_dir / "config.json").read_text())
    for name in TOKENIZER_FILES:
        if (tiny_dir / name).is_file():
            shutil.copy2(tiny_dir / name, directory / name)
    config = Qwen3Config(vocab_size=tiny_config["vocab_size"], bos_token_id=None,
                         eos_token_id=tiny_config["eos_token_id"],
                         pad_token_id=tiny_config["pad_token_id"], **QWEN3_40M)
    # A private generator state: the same weights on every build, whatever the
    # caller's RNG did before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen3ForCausalLM(config).to(torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / MARKER).write_text(json.dumps(info(model), indent=2) + "\n")


def info(model: Any) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    return {"build_version": BUILD_VERSION, "seed": SEED, "parameters": params,
            "architecture": QWEN3_40M}
