"""Per-operation overhead of the trainer: a trivial op through the SDK vs a bare HTTP round trip.

* **ours**: ``TrainingClient.forward([one 1-token datum]).result()`` against a
  real ``loops-runner serve trainer`` (tiny) on 127.0.0.1: submit (POST, 202),
  the engine thread runs a 1-token forward, the long-poll returns the result.
  The protocol has no cheaper operation that goes through the operation store
  (``get_info`` is answered client-side), and a 1-token forward of tiny costs
  well under a millisecond of compute, so this is the protocol's overhead.
* **anchor**: ``GET /health`` on the same server with an ``httpx.Client`` made
  the way the SDK makes its own (one round trip, no operation store).

Each round times ``calls`` of each, alternating one and the other, and keeps
each side's p50; the table shows the median of the per-round p50s. Goal: ours
p50 <= 3 ms (value = ours, in ms; the anchor is shown for scale).
"""

from __future__ import annotations

import statistics
import time

from benchmarks.suite import BenchContext, Result, median
from benchmarks.trainer_bench import RANK, datums, start_trainer

GOAL_MS = 3.0
WARMUP_CALLS = 20


def run(ctx: BenchContext) -> list[Result]:
    from loops_runner.sdk.deployments import health_url
    from loops_runner.sdk.http import make_client
    from loops_runner.sdk.training_client import TrainingClient

    calls = 30 if ctx.quick else 100
    server = start_trainer(ctx.home, "tiny", "bench-op-overhead.log")
    try:
        # A heartbeat mid-measure would only add noise.
        client = TrainingClient(server.url, lora_rank=RANK, base_model="tiny",
                                heartbeat_interval=3600.0)
        bare = make_client(timeout=30.0)
        one_token = datums([[11, 12]])
        health = health_url(server.url, "tiny")

        def ours() -> float:
            start = time.perf_counter()
            client.forward(one_token).result()
            return time.perf_counter() - start

        def anchor() -> float:
            start = time.perf_counter()
            bare.get(health).raise_for_status()
            return time.perf_counter() - start

        for _ in range(WARMUP_CALLS):  # connections, allocator, first-call imports
            ours()
            anchor()
        ours_p50: list[float] = []
        anchor_p50: list[float] = []
        for _ in range(ctx.rounds):
            ours_ms, anchor_ms = [], []
            for _ in range(calls):
                ours_ms.append(1000 * ours())
                anchor_ms.append(1000 * anchor())
            ours_p50.append(statistics.median(ours_ms))
            anchor_p50.append(statistics.median(anchor_ms))
        client.close()
        bare.close()
    finally:
        server.stop()
    value = median(ours_p50)
    return [Result(
        measure="op_overhead", ours=value, anchor=median(anchor_p50), unit="ms", value=value,
        goal=GOAL_MS, direction="at_most", rounds=[round(v, 3) for v in ours_p50],
        note=f"p50 of {calls} calls per round: SDK forward(1 token).result() vs GET /health "
             "with the same httpx client; value = ours p50 (ms)")]
