"""Sampler batching: 32 concurrent /sample requests vs one bare generate(batch=32) vs 32 in a row.

A real sampler server (``loops-runner serve sampler``, HTTP on 127.0.0.1) and the
same model loaded in this process, side by side:

* **server, concurrent**: 32 single-sample requests (64 new tokens each) sent at
  once; the server batches them dynamically (they arrive one by one).
* **bare generate**: ``model.generate`` on all 32 prompts as one padded-free
  batch in this process: no HTTP, no scheduling; the batching ceiling.
* **server, sequential**: the same 32 requests one after another.

All generate exactly 64 tokens per prompt (``ignore_eos`` / ``min_new_tokens``).
The in-process ``generate`` uses the same CPU thread count as the server's
engine (printed). Rounds alternate; the best round of each gives the headline
ratios (medians printed too). Goals: concurrent/bare >= 0.8, concurrent vs
sequential >= 8x.

    .venv/bin/python benchmarks/sampler_batching.py [--base-model tiny] [--rounds 3]
        [--temperature 0] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REQUESTS = 32
NEW_TOKENS = 64
PROMPT_TOKENS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 = greedy (default); > 0 samples (seeded)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the server's engine and the bare generate "
                             "(default: the engine's own choice)")
    parser.add_argument("--home", default=None, help="data home (default: a temporary one)")
    args = parser.parse_args()

    import httpx
    import torch

    from loops_runner.models.loading import load_base_model
    from loops_runner.servers.launch import spawn_server

    home = Path(args.home or tempfile.mkdtemp(prefix="loops-bench-"))
    env = {"LOOPS_SAMPLER_THREADS": str(args.threads)} if args.threads else {}
    print(f"starting a sampler for {args.base_model} (data home {home}) ...", flush=True)
    server = spawn_server(["sampler", "--base-model", args.base_model, "--home", str(home)],
                          home / "logs" / "bench-sampler.log", env=env)
    try:
        url = server.url
        engine = httpx.get(f"{url}/health", timeout=30).json()["engine"]
        threads = args.threads or engine["threads"]
        loaded = load_base_model(args.base_model, home=home, device="cpu")
        torch.set_num_threads(threads)
        model = loaded.model
        vocab = int(loaded.vocab_size)
        generator = torch.Generator().manual_seed(0)
        prompts = torch.randint(10, min(vocab, 4000), (REQUESTS, PROMPT_TOKENS),
                                generator=generator)
        sampled = args.temperature > 0

        def body(i: int) -> dict:
            return {"prompt": prompts[i].tolist(), "n": 1, "max_tokens": NEW_TOKENS,
                    "temperature": args.temperature, "seed": i, "ignore_eos": True,
                    "logprobs": 0, "return_tokens_as_token_ids": True}

        async def concurrent() -> float:
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(
                    max_connections=REQUESTS * 2)) as client:
                start = time.perf_counter()
                responses = await asyncio.gather(*[client.post(f"{url}/sample", json=body(i))
                                                   for i in range(REQUESTS)])
                elapsed = time.perf_counter() - start
            assert all(len(r.json()["choices"][0]["token_ids"]) == NEW_TOKENS
                       for r in responses)
            return elapsed

        def sequential() -> float:
            with httpx.Client(timeout=600) as client:
                start = time.perf_counter()
                for i in range(REQUESTS):
                    response = client.post(f"{url}/sample", json=body(i))
                    assert len(response.json()["choices"][0]["token_ids"]) == NEW_TOKENS
                return time.perf_counter() - start

        def bare() -> float:
            kwargs = {"do_sample": sampled, "max_new_tokens": NEW_TOKENS,
                      "min_new_tokens": NEW_TOKENS}
            if sampled:
                kwargs.update(temperature=args.temperature, top_k=0, top_p=1.0)
            with torch.no_grad():
                start = time.perf_counter()
                out = model.generate(prompts, attention_mask=torch.ones_like(prompts), **kwargs)
                elapsed = time.perf_counter() - start
            assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS
            return elapsed

        runs = {"server, 32 concurrent": lambda: asyncio.run(concurrent()),
                "bare generate(batch=32)": bare,
                "server, 32 sequential": sequential}
        for run in runs.values():  # warm-up
            run()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.rounds):
            for name, run in runs.items():
                times[name].append(run())
            print(f"round {round_index + 1}: " + ", ".join(
                f"{name} {times[name][-1]:.2f}s" for name in runs), flush=True)
    finally:
        server.stop()

    tokens = REQUESTS * NEW_TOKENS
    print(f"\nmodel {args.base_model}, {REQUESTS} requests x {NEW_TOKENS} new tokens "
          f"(prompts of {PROMPT_TOKENS}), temperature {args.temperature}, "
          f"{threads} CPU thread(s) for engine and generate, {os.cpu_count()} cores")
    print(f"{'':26}{'best s':>9}{'median s':>10}{'tokens/s':>10}")
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:26}{best[name]:9.3f}{statistics.median(values):10.3f}"
              f"{tokens / best[name]:10.0f}")
    concurrent_name, bare_name, sequential_name = runs
    ratio = best[bare_name] / best[concurrent_name]
    speedup = best[sequential_name] / best[concurrent_name]
    median_ratio = statistics.median(times[bare_name]) / statistics.median(times[concurrent_name])
    median_speedup = (statistics.median(times[sequential_name])
                      / statistics.median(times[concurrent_name]))
    print(f"\nconcurrent throughput / bare generate(batch=32): {ratio:.2f} "
          f"(median {median_ratio:.2f}; goal >= 0.8)")
    print(f"concurrent vs sequential speedup:                {speedup:.1f}x "
          f"(median {median_speedup:.1f}x; goal >= 8x)")


if __name__ == "__main__":
    main()
