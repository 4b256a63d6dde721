"""Helpers for the sampler tests: reference model math and trainer-style publishing.

Adapters are made here with PEFT exactly as the trainer saves them (PEFT
folder + checkpoint.json, written atomically), and published the way the
trainer does (``write_live`` + ``POST /internal/live``), so the sampler is
tested against the weight-sync contract without depending on the trainer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import torch

from loops_runner.storage import atomic, layout, manifests, weight_sync

SAMPLE_HEADERS = {"X-Baseten-Accept-Error": "1", "User-Agent": "baseten-loops/0.32"}


@contextmanager
def one_thread() -> Iterator[None]:
    """Reference math on one thread: the tiny model gains nothing from more, and on
    a shared, busy machine multi-threaded small ops stall (and slow the servers)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@lru_cache(maxsize=1)
def tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def base_model(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return model.eval()


@lru_cache(maxsize=1)
def shared_base(model_dir: str) -> Any:
    return base_model(Path(model_dir))


@dataclass
class Adapter:
    """A PEFT LoRA on the tiny model with random, non-zero B (so outputs change)."""

    model: Any  # PeftModel
    seed: int
    rank: int

    def save(self, home: Path, run_id: str, name: str, *, step: int = 0,
             base_model_id: str | None = None) -> Path:
        """Save like the trainer's save_weights_for_sampler (atomic, with manifest)."""
        final = layout.checkpoint_dir(home, run_id, "sampler_weights", name)
        with atomic.atomic_directory(final) as staging:
            self.model.save_pretrained(str(staging))
            files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(staging.iterdir()) if p.is_file()}
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            manifest = {
                "id": manifests.checkpoint_api_id(run_id, "sampler_weights", name),
                "run_id": run_id, "checkpoint_id": name, "kind": "sampler_weights",
                "target": "sampler", "checkpoint_type": "sampler",
                "base_model": base_model_id or str(self.model.peft_config["default"]
                                                   .base_model_name_or_path),
                "lora_rank": self.rank, "lora_alpha": self.rank * 2, "step": step,
                "created_at": now, "ttl_seconds": None, "expires_at": None,
                "size_bytes": sum(p.stat().st_size for p in staging.iterdir()),
                "files": files,
            }
            atomic.atomic_write_json(staging / manifests.MANIFEST_FILE, manifest)
        return final


def make_adapter(model_dir: Path, seed: int, rank: int = 4, scale: float = 0.5) -> Adapter:
    from peft import LoraConfig, get_peft_model

    model = base_model(model_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear",
                        lora_dropout=0.0)
    with warnings.catch_warnings():  # a transformers deprecation PEFT triggers
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    peft_model.eval()
    return Adapter(peft_model, seed, rank)


def publish(home: Path, run_id: str, version: int, name: str | None,
            sampler_url: str | None = None) -> httpx.Response | None:
    """What the trainer does after saving: LIVE.json, then notify the paired sampler."""
    weight_sync.write_live(home, run_id, version, name)
    url = sampler_url or weight_sync.paired_sampler_url(home, run_id)
    if url is None:
        return None
    return httpx.post(f"{url}/internal/live",
                      json={"run_id": run_id, "version": version, "name": name}, timeout=60)


# -- reference math ----------------------------------------------------------------


@torch.no_grad()
def greedy(model: Any, prompt: list[int], max_new_tokens: int, *,
           ignore_eos: bool = True) -> list[int]:
    """transformers' own greedy decoding: the reference for temperature 0.

    ``ignore_eos`` means what it means for the sampler (and vLLM): end-of-sequence
    tokens may be chosen, they just do not stop decoding. transformers'
    ``min_new_tokens`` would instead forbid them, which differs as soon as a
    (pretrained) model prefers to end; so that case is a plain argmax loop.
    """
    ids = torch.tensor([prompt])
    if ignore_eos:
        with one_thread():
            for _ in range(max_new_tokens):
                next_id = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        return ids[0, len(prompt):].tolist()
    kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": max_new_tokens}
    with one_thread():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def forward_logprobs(model: Any, tokens: list[int]) -> torch.Tensor:
    """log_softmax of one direct forward pass: row i predicts token i + 1."""
    with one_thread():
        logits = model(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def prompt_logprobs_reference(model: Any, prompt: list[int]) -> list[float]:
    logprobs = forward_logprobs(model, prompt)
    return [logprobs[i - 1, prompt[i]].item() for i in range(1, len(prompt))]


def sample(url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
           timeout: float = 120.0) -> httpx.Response:
    payload = {"n": 1, "temperature": 1.0, "top_p": 1.0, "logprobs": 0,
               "return_tokens_as_token_ids": True, **body}
    return httpx.post(f"{url}/sample", json=payload,
                      headers={**SAMPLE_HEADERS, **(headers or {})}, timeout=timeout)


def tokens_of(response: httpx.Response, choice: int = 0) -> list[int]:
    assert response.status_code == 200, response.text
    return response.json()["choices"][choice]["token_ids"]
