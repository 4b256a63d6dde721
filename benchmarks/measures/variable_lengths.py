"""Trainer micro-batching on sequences of mixed length vs padding all of them to the longest.

One ``forward_backward`` request whose sequence lengths are uniform in
16..256 goes through the trainer's engine (tiny, in this process) two ways:

* **ours** (what the server does): datums sorted by length and packed into
  micro-batches under the token budget, so each one pads little;
* **anchor**: the whole request as one batch padded to its longest sequence
  (what a plain loop does).

tokens/s counts real tokens only. Rounds alternate the two; the row reports
the median of the per-round speedups ours/anchor. Goal: >= 1.5x. The quick
run uses 48 datums and at most 2 rounds, the full run 64 and at most 5 (a
round is tens of seconds of compute on a busy 2-core machine).
"""

from __future__ import annotations

import time

from benchmarks.measures._trainer import RANK, wire_datum
from benchmarks.suite import BenchContext, Result, median

GOAL = 1.5
MIN_LEN = 16
MAX_LEN = 256


def run(ctx: BenchContext) -> list[Result]:
    import torch

    from loops_runner.models.loading import load_base_model
    from loops_runner.models.registry import canonical_model_id
    from loops_runner.servers.trainer.batching import plan_micro_batches
    from loops_runner.servers.trainer.engine import TrainerEngine
    from loops_runner.servers.trainer.validation import prepare_forward
    from loops_runner.wire.training import ForwardBackwardRequest

    # Few datums make a poor sample of 16..256 (the gain grows with the count:
    # 1.3x at 24, 1.64x at 64 on the same machine); 48 keeps the quick run short.
    datum_count = 48 if ctx.quick else 64
    rounds = min(ctx.rounds, 2 if ctx.quick else 5)
    loaded = load_base_model("tiny", home=ctx.home, device="cpu", dtype="float32")
    engine = TrainerEngine(loaded, ctx.home, base_model_id=canonical_model_id("tiny", ctx.home))
    engine.init_run("bench", RANK)

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (datum_count,), generator=gen).tolist()
    data = [wire_datum(torch.randint(10, 4000, (n + 1,), generator=gen).tolist())
            for n in lengths]
    batch = prepare_forward(ForwardBackwardRequest.model_validate({"data": data}),
                            engine.limits)
    real_tokens = batch.num_tokens

    def timed(strategy: str) -> float:
        engine.strategy = strategy  # type: ignore[assignment]
        start = time.perf_counter()
        engine.forward_backward("bench", batch, backward=True)
        elapsed = time.perf_counter() - start
        engine.run("bench").clear_gradients()
        return real_tokens / elapsed

    timed("grouped")  # warm-up
    timed("single")
    ours, anchor = [], []
    for _ in range(rounds):
        ours.append(timed("grouped"))
        anchor.append(timed("single"))
    speedups = [o / a for o, a in zip(ours, anchor, strict=True)]
    padded = {s: sum(m.padded_tokens for m in plan_micro_batches(
        [d.length for d in batch.data], engine.token_budget, strategy=s,  # type: ignore[arg-type]
        batch_overhead_tokens=engine.batch_overhead_tokens)) for s in ("grouped", "single")}
    return [Result(
        measure="variable_lengths", ours=median(ours), anchor=median(anchor), unit="tok/s",
        value=median(speedups), goal=GOAL, direction="at_least",
        rounds=[round(s, 3) for s in speedups],
        note=f"tiny, {datum_count} datums of {MIN_LEN}..{MAX_LEN} tokens ({real_tokens} real); "
             f"padded tokens: grouped {padded['grouped']}, single {padded['single']}; "
             "value = median of per-round speedups")]
