"""Sampler batching: 32 concurrent ``/sample`` requests vs one bare ``generate(batch=32)``
and vs the same requests one after another.

* **ours**: 32 single-sample requests (``NEW_TOKENS`` new tokens each, ``ignore_eos``)
  sent at once over HTTP to a real ``loops-runner serve sampler`` (tiny); the server
  batches them as they arrive.
* **anchor (a), bare generate**: ``model.generate`` on the same 32 prompts as one
  batch in this process with transformers, same thread count as the engine (from
  its ``/health``): no HTTP, no scheduling, the batching ceiling. Goal: ours
  throughput >= 0.9x of it.
* **anchor (b), sequential**: the requests one after another. A request's time
  does not depend on its neighbours, so ``SEQUENTIAL`` of them stand for all 32
  (32 in a row take ~50 s here per round); goal: ours >= 10x its throughput.

Figures are generated tokens/s; each round runs the three once, order rotating;
value = median of the per-round ratios. Quick: at most 2 rounds and 2 sequential
requests; still 64 new tokens, because with fewer the per-request admission and
prefill weigh more than the batched decode the goal is about.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks.measures._support import interleave, paired, shared_sampler, standalone
from benchmarks.suite import BenchContext, Result

REQUESTS = 32
PROMPT_TOKENS = 32


def run(ctx: BenchContext) -> list[Result]:
    import httpx
    import torch

    from loops_runner.models.loading import load_base_model

    new_tokens = 64
    sequential_count = 2 if ctx.quick else 8
    rounds = min(ctx.rounds, 2) if ctx.quick else ctx.rounds
    server = shared_sampler(ctx)
    previous_threads = torch.get_num_threads()
    try:
        url = server.url
        engine_threads = int(httpx.get(f"{url}/health", timeout=30).json()["engine"]["threads"])
        loaded = load_base_model("tiny", home=ctx.home, device="cpu")
        torch.set_num_threads(engine_threads)
        model = loaded.model
        generator = torch.Generator().manual_seed(0)
        prompts = torch.randint(10, min(int(loaded.vocab_size), 4000),
                                (REQUESTS, PROMPT_TOKENS), generator=generator)

        def body(i: int) -> dict[str, Any]:
            return {"prompt": prompts[i].tolist(), "n": 1, "max_tokens": new_tokens,
                    "temperature": 0.0, "ignore_eos": True, "logprobs": 0,
                    "return_tokens_as_token_ids": True}

        def check(response: httpx.Response) -> None:
            response.raise_for_status()
            assert len(response.json()["choices"][0]["token_ids"]) == new_tokens

        async def concurrent_async() -> float:
            limits = httpx.Limits(max_connections=REQUESTS * 2)
            async with httpx.AsyncClient(timeout=600, limits=limits) as client:
                start = time.perf_counter()
                responses = await asyncio.gather(*[client.post(f"{url}/sample", json=body(i))
                                                   for i in range(REQUESTS)])
                elapsed = time.perf_counter() - start
            for response in responses:
                check(response)
            return REQUESTS * new_tokens / elapsed

        def concurrent() -> float:
            return asyncio.run(concurrent_async())

        def sequential(count: int = sequential_count) -> float:
            with httpx.Client(timeout=600) as client:
                start = time.perf_counter()
                for i in range(count):
                    check(client.post(f"{url}/sample", json=body(i)))
                return count * new_tokens / (time.perf_counter() - start)

        def bare() -> float:
            with torch.no_grad():
                start = time.perf_counter()
                out = model.generate(prompts, attention_mask=torch.ones_like(prompts),
                                     do_sample=False, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens)
                elapsed = time.perf_counter() - start
            assert out.shape[1] == PROMPT_TOKENS + new_tokens
            return REQUESTS * new_tokens / elapsed

        # First-call costs (connections, allocator, kernels) stay out of the rounds.
        concurrent()
        bare()
        sequential(1)
        values = interleave(rounds, {"concurrent": concurrent, "bare": bare,
                                     "sequential": sequential})
    finally:
        torch.set_num_threads(previous_threads)
    shape = (f"{REQUESTS} x {new_tokens} new tokens, prompts of {PROMPT_TOKENS}, greedy, "
             f"{engine_threads} thread(s) for engine and generate; tokens/s")
    return [
        paired("sampling vs bare generate", values["concurrent"],
               values["bare"], unit="tok/s", goal=0.9, direction="at_least",
               note=f"ours = 32 concurrent /sample on the server, anchor = in-process "
                    f"transformers generate; {shape}; value = median per-round ratio"),
        paired("sampling vs sequential", values["concurrent"],
               values["sequential"], unit="tok/s", goal=10.0, direction="at_least",
               note=f"anchor = {sequential_count} /sample calls in a row (stand for 32); "
                    f"{shape}; value = median per-round ratio"),
    ]


if __name__ == "__main__":
    standalone(run)
