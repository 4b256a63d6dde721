"""Length-grouped micro-batching vs padding the whole request to its longest row.

The trainer engine runs one ``forward_backward`` request of sequences whose
lengths are uniform in 16..256, two ways, side by side:

* **grouped** (what the server does): datums sorted by length and packed into
  micro-batches under the token budget, so each one pads little;
* **single**: the whole request as one batch padded to its longest sequence.

Tokens/s counts real tokens only. Rounds alternate; the fastest round of each
strategy gives the headline speedup (medians printed too). Goal: >= 1.5x.

    .venv/bin/python benchmarks/trainer_microbatching.py [--datums 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from bench_common import add_common_options, apply_common_options

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datums", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    add_common_options(parser)
    args = parser.parse_args()
    home = apply_common_options(args)

    from loops_runner.models.loading import load_base_model
    from loops_runner.models.registry import canonical_model_id
    from loops_runner.servers.trainer.batching import plan_micro_batches
    from loops_runner.servers.trainer.engine import TrainerEngine
    from loops_runner.servers.trainer.validation import prepare_forward
    from loops_runner.wire.training import ForwardBackwardRequest

    loaded = load_base_model("tiny", home=home, device="cpu", dtype="float32")
    engine = TrainerEngine(loaded, home, base_model_id=canonical_model_id("tiny", home))
    engine.init_run("bench", 8)

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.datums,), generator=gen)
    data = []
    for n in lengths.tolist():
        seq = torch.randint(10, 4000, (n + 1,), generator=gen).tolist()
        data.append({"model_input": {"chunks": [{"type": "encoded_text", "tokens": seq[:-1]}]},
                     "loss_fn_inputs": {"target_tokens": {"data": seq[1:], "dtype": "int64",
                                                          "shape": [n]}}})
    batch = prepare_forward(ForwardBackwardRequest.model_validate({"data": data}), engine.limits)
    real_tokens = batch.num_tokens

    def run(strategy: str) -> float:
        engine.strategy = strategy  # type: ignore[assignment]
        start = time.perf_counter()
        engine.forward_backward("bench", batch, backward=True)
        elapsed = time.perf_counter() - start
        engine.run("bench").clear_gradients()
        return elapsed

    strategies = ("grouped", "single")
    for strategy in strategies:  # warm-up
        run(strategy)
    times: dict[str, list[float]] = {s: [] for s in strategies}
    for _ in range(args.rounds):
        for strategy in strategies:
            times[strategy].append(run(strategy))

    plans = {s: plan_micro_batches([d.length for d in batch.data], engine.token_budget,
                                   strategy=s,  # type: ignore[arg-type]
                                   batch_overhead_tokens=engine.batch_overhead_tokens)
             for s in strategies}
    print(f"{args.datums} datums, lengths uniform in {args.min_len}..{args.max_len}, "
          f"{real_tokens} real tokens, token budget {engine.token_budget}, "
          f"torch threads {torch.get_num_threads()}")
    for strategy in strategies:
        padded = sum(m.padded_tokens for m in plans[strategy])
        print(f"  {strategy:8s} {len(plans[strategy]):3d} micro-batches, {padded:6d} padded tokens "
              f"({100 * (padded - real_tokens) / padded:4.1f}% padding): "
              f"best {real_tokens / min(times[strategy]):7.0f} tokens/s, "
              f"median {real_tokens / statistics.median(times[strategy]):7.0f} tokens/s")
    best = min(times["single"]) / min(times["grouped"])
    med = statistics.median(times["single"]) / statistics.median(times["grouped"])
    print(f"speedup grouped / single: best rounds {best:.2f}x, medians {med:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
