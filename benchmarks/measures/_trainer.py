"""What the trainer measures share: a trainer server, batches, the plain PEFT anchor, RSS.

The anchor everywhere is what one would write by hand: PEFT LoRA on the same
projections, rank and alpha as the trainer, full-vocabulary logits, mean
cross-entropy, ``torch.optim.AdamW`` with the SDK's default hyper-parameters
and the same gradient clipping. torch is imported inside functions only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.measures._support import shared_server
from loops_runner.servers.launch import ServerProcess, spawn_server, tail

RANK = 8
LORA_ALPHA = 32  # the engine's DEFAULT_LORA_ALPHA
LEARNING_RATE = 1e-4
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HEALTH_TIMEOUT_S = 300.0


def start_trainer(home: Path, base_model: str, log_name: str) -> ServerProcess:
    """``loops-runner serve trainer`` on 127.0.0.1, returned once its model is loaded."""
    server = spawn_server(["trainer", "--base-model", base_model, "--home", str(home),
                           "--device", "cpu", "--dtype", "float32"],
                          home / "logs" / log_name)
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if not server.alive():
                raise RuntimeError(f"trainer died while loading:\n{tail(server.log_path)}")
            try:
                if httpx.get(f"{server.url}/health", timeout=10).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"trainer not ready after {HEALTH_TIMEOUT_S:.0f}s:\n"
                           f"{tail(server.log_path)}")
    except BaseException:
        server.stop()
        raise


def shared_trainer(home: Path, base_model: str) -> ServerProcess:
    """One trainer per (home, model) for the whole benchmark process, stopped at exit.

    Starting a trainer costs tens of seconds on a busy 2-core machine (imports
    dominate); measures that only drive it over HTTP share one. Each of them
    uses its own run, so they never see each other's adapters. Measures that
    read process-wide figures (peak RSS) start their own instead.
    """
    return shared_server(("trainer", str(home), base_model),
                         lambda: start_trainer(home, base_model,
                                               f"bench-trainer-{Path(base_model).name}.log"))


def sequences(rows: int, length: int, seed: int = 0, *, low: int = 10,
              high: int = 4000) -> list[list[int]]:
    """``rows`` random token sequences of ``length + 1`` ids (inputs plus the last target)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(low, high, (length + 1,), generator=gen).tolist() for _ in range(rows)]


def datums(seqs: list[list[int]]) -> list[Any]:
    """Next-token datums of the wire protocol: input ``seq[:-1]``, targets ``seq[1:]``."""
    from loops_runner.wire import Datum

    return [Datum.model_validate({
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": seq[:-1]}]},
        "loss_fn_inputs": {"target_tokens": {"data": seq[1:], "dtype": "int64",
                                             "shape": [len(seq) - 1]}}}) for seq in seqs]


def wire_datum(seq: list[int]) -> dict[str, Any]:
    """The same datum as plain JSON (for engine-level requests)."""
    n = len(seq) - 1
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": seq[:-1]}]},
            "loss_fn_inputs": {"target_tokens": {"data": seq[1:], "dtype": "int64",
                                                 "shape": [n]}}}


class PeftLoop:
    """The hand-written LoRA loop: the anchor of the trainer measures."""

    def __init__(self, model_path: str, rank: int = RANK) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        for param in base.parameters():
            param.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                            task_type="CAUSAL_LM", target_modules=PROJECTIONS)
        torch.manual_seed(0)
        self.model = get_peft_model(base, config)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # The SDK's AdamParams defaults, so both sides do the same update.
        self.optimizer = torch.optim.AdamW(self.params, lr=LEARNING_RATE, betas=(0.9, 0.95),
                                           eps=1e-12, weight_decay=0.0)

    def step(self, batch: Any) -> float:
        import torch

        logits = self.model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def peak_rss_mib(pid: int | None = None) -> float:
    """The process's peak resident set (``VmHWM``) in MiB."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/<pid>/status")
