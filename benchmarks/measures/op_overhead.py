"""Per-operation overhead of the trainer: a trivial op through the SDK vs a bare HTTP round trip.

* **ours**: ``TrainingClient.forward([]).result()`` against a real
  ``loops-runner serve trainer`` (tiny) on 127.0.0.1: submit (POST, 202), the
  operation queues on the engine thread like any other, the long-poll returns
  its result. An empty ``data`` is valid (spec 4.5: no outputs, loss 0), so
  this is the whole path of an operation with no model compute: the
  protocol's overhead. (``get_info`` is answered client-side, nothing to time.)
  A 1-token forward is timed too and shown as a report row: it adds the
  model's fixed per-forward cost (dozens of small kernels).
* **anchor**: ``GET /health`` on the same server with an ``httpx.Client`` made
  the way the SDK makes its own (one round trip, no operation store).

Each round times ``calls`` of each, alternating one and the other, and keeps
each side's p50; the table shows the median of the per-round p50s. Goal: ours
p50 <= 3 ms (value = ours, in ms; the anchor is shown for scale).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.measures._trainer import RANK, datums, shared_trainer
from benchmarks.suite import BenchContext, Result, median

GOAL_MS = 3.0
WARMUP_CALLS = 20


def run(ctx: BenchContext) -> list[Result]:
    from loops_runner.sdk.deployments import health_url
    from loops_runner.sdk.http import make_client
    from loops_runner.sdk.training_client import TrainingClient

    calls = 20 if ctx.quick else 100
    server = shared_trainer(ctx.home, "tiny")
    # A heartbeat mid-measure would only add noise.
    client = TrainingClient(server.url, lora_rank=RANK, base_model="tiny", run_id="op-overhead",
                            heartbeat_interval=3600.0)
    bare = make_client(timeout=30.0)
    try:
        one_token = datums([[11, 12]])
        health = health_url(server.url, "tiny")

        def ours(data: list[Any]) -> float:
            start = time.perf_counter()
            client.forward(data).result()
            return time.perf_counter() - start

        def anchor() -> float:
            start = time.perf_counter()
            bare.get(health).raise_for_status()
            return time.perf_counter() - start

        for _ in range(WARMUP_CALLS):  # connections, allocator, first-call imports
            ours([])
            ours(one_token)
            anchor()
        ours_p50: list[float] = []
        token_p50: list[float] = []
        anchor_p50: list[float] = []
        for _ in range(ctx.rounds):
            ours_ms, token_ms, anchor_ms = [], [], []
            for _ in range(calls):
                ours_ms.append(1000 * ours([]))
                anchor_ms.append(1000 * anchor())
                token_ms.append(1000 * ours(one_token))
            ours_p50.append(statistics.median(ours_ms))
            token_p50.append(statistics.median(token_ms))
            anchor_p50.append(statistics.median(anchor_ms))
    finally:
        client.close()
        bare.close()
    value = median(ours_p50)
    anchor_ms = median(anchor_p50)
    return [
        Result(measure="op_overhead", ours=value, anchor=anchor_ms, unit="ms", value=value,
               goal=GOAL_MS, direction="at_most", rounds=[round(v, 3) for v in ours_p50],
               note=f"p50 of {calls} calls per round: SDK forward([]).result() (submit + "
                    "long-poll) vs GET /health, same httpx client; value = ours p50 in ms"),
        Result(measure="op_overhead[1-token forward]", ours=median(token_p50), anchor=anchor_ms,
               unit="ms", value=median(token_p50), goal=None, direction="report",
               rounds=[round(v, 3) for v in token_p50],
               note="the same with one token of tiny: adds the model's per-forward cost"),
    ]
