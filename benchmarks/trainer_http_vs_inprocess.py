"""Trainer throughput through HTTP vs the same loop in-process (side by side).

Three loops of ``forward_backward`` + ``optim_step`` on the same model, batch
and hyper-parameters, tokens/s each:

* **http**: a real ``loops-runner serve trainer`` subprocess on 127.0.0.1,
  driven over the async-operation protocol the way the SDK does it (submit
  both operations back to back, then long-poll their results);
* **engine**: the trainer's own engine called directly in this process (what
  the server does minus HTTP, JSON and the operation store);
* **peft**: a plain PEFT + ``torch.optim.AdamW`` loop, what one would write by
  hand (full-vocabulary logits, mean cross-entropy).

Rounds alternate between the loops, so machine noise hits all three alike;
the fastest round of each loop (the least disturbed one on a shared machine)
gives the headline ratio, the medians are printed too. Goal: http / peft >= 0.9
on the tiny model.

    .venv/bin/python benchmarks/trainer_http_vs_inprocess.py [--rows 16 --length 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import torch
from bench_common import add_common_options, apply_common_options

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

RANK = 8
LR = 1e-4


def make_batch(rows: int, length: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 4000, (length + 1,), generator=gen).tolist() for _ in range(rows)]


def wire_datum(seq: list[int]) -> dict[str, Any]:
    n = len(seq) - 1
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": seq[:-1]}]},
            "loss_fn_inputs": {"target_tokens": {"data": seq[1:], "dtype": "int64",
                                                 "shape": [n]}}}


class HttpLoop:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=600)
        self.run_id = f"bench-{uuid.uuid4().hex[:8]}"

    def op_async(self, op: str, body: dict[str, Any]) -> str:
        response = self.client.post(f"{self.url}/{op}", json={"run_id": self.run_id, **body},
                                    headers={"Idempotency-Key": uuid.uuid4().hex})
        response.raise_for_status()
        return str(response.json()["operation_id"])

    def wait(self, operation_id: str) -> dict[str, Any]:
        while True:
            response = self.client.get(f"{self.url}/operations/{operation_id}")
            if response.status_code != 408:
                body = response.json()
                assert body["status"] == "done", body
                return body["result"]  # type: ignore[no-any-return]

    def setup(self) -> None:
        self.wait(self.op_async("init_trainer_server", {"lora_rank": RANK, "base_model": "tiny"}))

    def step(self, data: list[dict[str, Any]]) -> float:
        fb = self.op_async("forward_backward", {"data": data, "loss_fn": "cross_entropy"})
        opt = self.op_async("optim_step", {"adam_params": {"learning_rate": LR}})
        loss = self.wait(fb)["loss"]
        self.wait(opt)
        return float(loss)


class EngineLoop:
    def __init__(self, home: Path) -> None:
        from loops_runner.models.loading import load_base_model
        from loops_runner.models.registry import canonical_model_id
        from loops_runner.servers.trainer.engine import TrainerEngine

        loaded = load_base_model("tiny", home=home, device="cpu", dtype="float32")
        self.engine = TrainerEngine(loaded, home, base_model_id=canonical_model_id("tiny", home))
        self.engine.init_run("bench", RANK)

    def step(self, data: list[dict[str, Any]]) -> float:
        from loops_runner.servers.trainer.validation import prepare_forward
        from loops_runner.wire.training import AdamParams, ForwardBackwardRequest

        request = ForwardBackwardRequest.model_validate({"data": data})
        batch = prepare_forward(request, self.engine.limits)
        out = self.engine.forward_backward("bench", batch, backward=True)
        self.engine.optim_step("bench", AdamParams(learning_rate=LR))
        return out.loss


class PeftLoop:
    def __init__(self, home: Path) -> None:
        from peft import LoraConfig, get_peft_model

        from loops_runner.models.loading import load_base_model

        base = load_base_model("tiny", home=home, device="cpu", dtype="float32").model
        config = LoraConfig(r=RANK, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                            "gate_proj", "up_proj", "down_proj"])
        self.model = get_peft_model(base, config)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.95), eps=1e-12,
                                           weight_decay=0.0)

    def step(self, seqs: list[list[int]]) -> float:
        batch = torch.tensor(seqs)
        logits = self.model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def timed(fn: Any, arg: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn(arg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    add_common_options(parser)
    args = parser.parse_args()
    home = apply_common_options(args)

    from loops_runner.servers.launch import spawn_server

    seqs = make_batch(args.rows, args.length)
    data = [wire_datum(s) for s in seqs]
    tokens_per_step = args.rows * args.length

    server = spawn_server(["trainer", "--base-model", "tiny", "--home", str(home)],
                          home / "logs" / "bench-trainer.log")
    try:
        while httpx.get(f"{server.url}/health").status_code != 200:
            time.sleep(0.2)
        http = HttpLoop(server.url)
        http.setup()
        engine = EngineLoop(home)
        peft = PeftLoop(home)
        loops: dict[str, tuple[Any, Any]] = {"http": (http.step, data),
                                             "engine": (engine.step, data),
                                             "peft": (peft.step, seqs)}
        for step, arg in loops.values():  # warm-up (allocator, kernels, connections)
            step(arg)
            step(arg)
        times: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name, (step, arg) in loops.items():
                times[name].append(timed(step, arg, args.steps))
    finally:
        server.stop()

    tokens = tokens_per_step * args.steps
    best = {name: tokens / min(values) for name, values in times.items()}
    median = {name: tokens / statistics.median(values) for name, values in times.items()}
    print(f"batch: {args.rows} x {args.length} tokens, LoRA rank {RANK}, "
          f"{args.rounds} rounds x {args.steps} steps, torch threads {torch.get_num_threads()}")
    for name in loops:
        print(f"  {name:7s} best {best[name]:7.0f} tokens/s   median {median[name]:7.0f} tokens/s")
    for label, rate in (("best rounds", best), ("medians", median)):
        print(f"{label:12s} http / peft in-process = {rate['http'] / rate['peft']:.3f} "
              f"(goal >= 0.9)   http / engine in-process = {rate['http'] / rate['engine']:.3f}")


if __name__ == "__main__":
    main()
