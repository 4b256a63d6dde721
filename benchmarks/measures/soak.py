"""Soak: many clients of mixed operations on one trainer, then concurrent samples for minutes.

The long version of ``tests/reliability/test_load.py`` (same load drivers,
``tests/reliability/load.py``), on a fresh trainer and a fresh sampler of its
own (tiny, 127.0.0.1), so the RSS figures are the soak's alone:

* **trainer**: 8 clients x 200 mixed forward_backward / optim_step / forward
  operations, some submits replayed with the same Idempotency-Key. Rows:
  operations lost, duplicated or failed (goal 0); per-run order, the first
  runs' outcomes against a one-at-a-time replay of the same stream (goal: all
  equal); RSS growth after warm-up (goal <= 10 %); ops/s reported.
* **sampler**: 64 concurrent ``/sample`` requests, again and again for 120 s.
  Rows: non-200 answers (goal 0); RSS growth after warm-up (goal <= 10 %).

There is no anchor: the goals are absolute (nothing lost, nothing growing).
Minutes of load: left out of ``--quick`` unless ``--only soak`` names it (then
2 clients x 20 ops and 10 s of sampling).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from benchmarks.measures._support import start_server
from benchmarks.suite import BenchContext, Result

GOAL_RSS_GROWTH = 0.10
REPLAY_EVERY = 10  # tests/reliability/load.py drive_client's default


def _count(measure: str, value: float, note: str) -> Result:
    return Result(measure=measure, ours=value, anchor=None, unit="count", value=value,
                  goal=0, direction="at_most", rounds=[value], note=note)


def _growth(measure: str, warm: int, end: int, note: str) -> Result:
    growth = end / warm - 1
    return Result(measure=measure, ours=end / 2**20, anchor=warm / 2**20, unit="MiB",
                  value=round(growth, 4), goal=GOAL_RSS_GROWTH, direction="at_most",
                  rounds=[round(growth, 4)], note=f"{note}; value = end / after warm-up - 1")


def trainer_phase(url: str, pid: int, clients: int, ops: int,
                  runs_checked: int) -> list[Result]:
    from tests.reliability.load import rss_bytes, sequential_replay, trainer_load

    asyncio.run(trainer_load(url, clients, 9, seed=5000))  # warm-up
    rss_warm = rss_bytes(pid)
    started = time.perf_counter()
    results = asyncio.run(trainer_load(url, clients, ops, seed=0))
    elapsed = time.perf_counter() - started
    rss_end = rss_bytes(pid)
    ids = [op for result in results for op in result.operation_ids]
    failed = sum(o["status"] != "done" for result in results for o in result.outcomes)
    checked = min(runs_checked, clients)
    equal = sum(asyncio.run(sequential_replay(url, c, ops, 0)).losses() == results[c].losses()
                for c in range(checked))
    store = httpx.get(f"{url}/health", timeout=30).json()["operations"]
    resent = clients * len(range(0, ops, REPLAY_EVERY))  # drive_client's replay cadence
    matched = sum(r.replays_matched for r in results)
    load = (f"{clients} clients x {ops} ops = {len(ids)} ops in {elapsed:.1f} s "
            f"({len(ids) / elapsed:.1f} ops/s); operation store {store}")
    return [
        _count("soak: trainer ops lost or duplicated", clients * ops - len(set(ids)), load),
        _count("soak: idempotent replays naming another operation", resent - matched,
               f"{resent} submits sent twice with the same Idempotency-Key"),
        _count("soak: trainer ops failed", failed, load),
        Result(measure="soak: runs in order (vs one-at-a-time replay)", ours=equal,
               anchor=checked, unit="runs", value=equal / checked, goal=1.0,
               direction="at_least", rounds=[equal / checked],
               note="each checked run's losses equal a replay of its stream alone"),
        _growth("soak: trainer RSS growth", rss_warm, rss_end, load),
    ]


def sampler_phase(url: str, pid: int, concurrency: int, seconds: float) -> list[Result]:
    from tests.reliability.load import rss_bytes, sampler_load

    asyncio.run(sampler_load(url, concurrency, 2))  # warm-up
    rss_warm = rss_bytes(pid)
    started = time.perf_counter()
    statuses: list[int] = []
    while time.perf_counter() - started < seconds:
        statuses += asyncio.run(sampler_load(url, concurrency, 1))
    elapsed = time.perf_counter() - started
    rss_end = rss_bytes(pid)
    load = (f"{concurrency} concurrent /sample for {elapsed:.0f} s: {len(statuses)} requests "
            f"({len(statuses) / elapsed:.1f} req/s)")
    return [_count("soak: sampler non-200 answers", sum(s != 200 for s in statuses), load),
            _growth("soak: sampler RSS growth", rss_warm, rss_end, load)]


def run(ctx: BenchContext) -> list[Result]:
    clients, ops, seconds = (2, 20, 10.0) if ctx.quick else (8, 200, 120.0)
    logs = ctx.scratch("soak")

    trainer = start_server(ctx, ["trainer", "--base-model", "tiny"], logs / "trainer.log",
                           health_path="/health?base_model=tiny")
    try:
        results = trainer_phase(trainer.url, trainer.pid, clients, ops, runs_checked=2)
    finally:
        trainer.stop()
    sampler = start_server(ctx, ["sampler", "--base-model", "tiny"], logs / "sampler.log")
    try:
        results += sampler_phase(sampler.url, sampler.pid, 64, seconds)
    finally:
        sampler.stop()
    return results


if __name__ == "__main__":
    from benchmarks.measures._support import standalone

    standalone(run)
