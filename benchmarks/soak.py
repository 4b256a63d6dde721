"""Soak: 8 clients x 200 mixed operations on one trainer, then 64 concurrent samples for 2 min.

Starts its own trainer and sampler (tiny model) on 127.0.0.1 and prints, for
each phase: operations or requests per second, lost/duplicated operations, the
per-run order check (each run's outcomes against a one-at-a-time replay), RSS
after warm-up and at the end, and the trainer's operation-store counts.

    python benchmarks/soak.py                       # the full soak (about 5 min on 2 cores)
    python benchmarks/soak.py --ops 50 --sample-seconds 20   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import add_common_options, apply_common_options

from tests.reliability.load import (
    rss_bytes,
    sampler_load,
    sequential_replay,
    trainer_load,
)
from tests.servers import start_server


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def trainer_phase(url: str, pid: int, clients: int, ops: int, replays: int) -> None:
    asyncio.run(trainer_load(url, clients, 9, seed=5000))  # warm-up
    rss_warm = rss_bytes(pid)
    started = time.perf_counter()
    results = asyncio.run(trainer_load(url, clients, ops, seed=0))
    elapsed = time.perf_counter() - started
    rss_end = rss_bytes(pid)
    ids = [op for result in results for op in result.operation_ids]
    failed = sum(o["status"] != "done" for result in results for o in result.outcomes)
    ordered = [asyncio.run(sequential_replay(url, c, ops, 0)).losses() == results[c].losses()
               for c in range(min(replays, clients))]
    counts = httpx.get(f"{url}/health", timeout=30).json()["operations"]
    print(f"trainer: {clients} clients x {ops} ops = {len(ids)} ops in {elapsed:.1f} s "
          f"({len(ids) / elapsed:.1f} ops/s)")
    print(f"  distinct operation ids {len(set(ids))}/{len(ids)}, failed {failed}, "
          f"idempotent replays matched {sum(r.replays_matched for r in results)}")
    print(f"  per-run order (vs one-at-a-time replay): {sum(ordered)}/{len(ordered)} runs equal")
    print(f"  RSS after warm-up {_mib(rss_warm)}, at the end {_mib(rss_end)} "
          f"({rss_end / rss_warm - 1:+.1%})")
    print(f"  operation store: {counts}")


def sampler_phase(url: str, pid: int, concurrency: int, seconds: float) -> None:
    asyncio.run(sampler_load(url, concurrency, 2))  # warm-up
    rss_warm = rss_bytes(pid)
    started = time.perf_counter()
    statuses: list[int] = []
    samples: list[tuple[float, int]] = []
    while time.perf_counter() - started < seconds:
        statuses += asyncio.run(sampler_load(url, concurrency, 1))
        samples.append((time.perf_counter() - started, rss_bytes(pid)))
    elapsed = time.perf_counter() - started
    rss_end = rss_bytes(pid)
    bad = [s for s in statuses if s != 200]
    print(f"sampler: {concurrency} concurrent /sample for {elapsed:.0f} s: {len(statuses)} "
          f"requests ({len(statuses) / elapsed:.1f} req/s), non-200: {len(bad)}")
    print(f"  RSS after warm-up {_mib(rss_warm)}, peak {_mib(max(r for _, r in samples))}, "
          f"at the end {_mib(rss_end)} ({rss_end / rss_warm - 1:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_options(parser)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ops", type=int, default=200, help="operations per client")
    parser.add_argument("--replays", type=int, default=2,
                        help="runs checked against a one-at-a-time replay")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sample-seconds", type=float, default=120.0)
    args = parser.parse_args()
    home = apply_common_options(args)
    trainer = start_server(["trainer", "--base-model", "tiny"], home, "soak-trainer.log",
                           health_path="/health?base_model=tiny")
    try:
        trainer_phase(trainer.url, trainer.pid, args.clients, args.ops, args.replays)
    finally:
        trainer.stop()
    sampler = start_server(["sampler", "--base-model", "tiny"], home, "soak-sampler.log")
    try:
        sampler_phase(sampler.url, sampler.pid, args.concurrency, args.sample_seconds)
    finally:
        sampler.stop()


if __name__ == "__main__":
    main()
