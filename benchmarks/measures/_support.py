"""What the sampler, start-up and RL measures share (not a measure: the leading
underscore keeps ``python -m benchmarks`` from running it).

* ``interleave``: ours and the anchor(s) once per round, the order rotating, so
  a slow spell on this shared machine lands on every side alike.
* ``paired``: a ``Result`` from per-round pairs, value = median of the per-round
  ratios (each round's two figures were taken back to back; the ratio of the
  medians would pair figures from different moments).
* ``start_server``: a real ``loops-runner serve ...`` on the context's home, once it
  answers; ``start_sampler``: the tiny sampler that way, ready to sample;
  ``shared_sampler``: one of them for every measure of the process that only
  drives it over HTTP (a start costs ~10 s of imports).
* ``standalone``: ``python -m benchmarks.measures.<name> [--quick]`` builds its
  own ``BenchContext`` (a temporary home with tiny) and prints the results.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.suite import BenchContext, Direction, Result, median

QUICK_ROUNDS = 3
FULL_ROUNDS = 7
SERVER_READY_S = 180.0

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def interleave(rounds: int, runs: dict[str, Callable[[], float]], *,
               on_round: Callable[[int, dict[str, float]], None] | None = None,
               ) -> dict[str, list[float]]:
    """Each run once per round, the starting one rotating from round to round."""
    names = list(runs)
    values: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        this_round: dict[str, float] = {}
        for name in names[shift:] + names[:shift]:
            this_round[name] = runs[name]()
            values[name].append(this_round[name])
        if on_round is not None:
            on_round(index, this_round)
    return values


def paired(measure: str, ours: list[float], anchor: list[float], *, unit: str,
           goal: float | None, direction: Direction, note: str,
           invert: bool = False) -> Result:
    """``value`` = median of ours/anchor per round (anchor/ours with ``invert``)."""
    ratios = [(a / o) if invert else (o / a) for o, a in zip(ours, anchor, strict=True)]
    return Result(measure=measure, ours=median(ours), anchor=median(anchor), unit=unit,
                  value=median(ratios), goal=goal, direction=direction,
                  rounds=[round(r, 4) for r in ratios], note=note)


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that caps torch threads in a child process (empty: its own choice)."""
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def start_server(ctx: BenchContext, args: list[str], log_path: Path, *,
                 health_path: str = "/health", env: dict[str, str] | None = None
                 ):  # -> ServerProcess
    """``loops-runner serve <args>`` on the context's home, once ``health_path`` answers."""
    from loops_runner.servers.launch import spawn_server

    server = spawn_server([*args, "--home", str(ctx.home)], log_path,
                          env={**thread_env(ctx.threads), **(env or {})})
    try:
        server.wait_healthy(health_path, timeout=SERVER_READY_S)
    except BaseException:
        server.stop()
        raise
    return server


def start_sampler(ctx: BenchContext, log_name: str, *, run_id: str | None = None,
                  env: dict[str, str] | None = None):  # -> ServerProcess
    """``loops-runner serve sampler`` for tiny on the context's home, once it answers."""
    args = ["sampler", "--base-model", "tiny"]
    if run_id is not None:
        args += ["--run-id", run_id]
    return start_server(ctx, args, ctx.home / "logs" / log_name, env=env)


_SHARED_SERVERS: dict[tuple[Any, ...], Any] = {}


def shared_server(key: tuple[Any, ...], start: Callable[[], Any]):  # -> ServerProcess
    """One server per ``key`` for the whole benchmark process, started on first use
    (again if it died) and stopped at exit: a start costs ~10 s of imports."""
    server = _SHARED_SERVERS.get(key)
    if server is None or not server.alive():
        server = start()
        _SHARED_SERVERS[key] = server
    return server


@atexit.register
def _stop_shared_servers() -> None:
    for server in _SHARED_SERVERS.values():
        server.stop()


def shared_sampler(ctx: BenchContext):  # -> ServerProcess
    """One base-model sampler per (home, threads) for the whole benchmark process.

    The sampling measures send their own prompts with their own seeds and read
    only their own responses, so one process serves them all.
    """
    return shared_server(("sampler", str(ctx.home), ctx.threads),
                         lambda: start_sampler(ctx, f"bench-sampler-{len(_SHARED_SERVERS)}.log"))


def standalone(run: Callable[[BenchContext], list[Result]],
               argv: Sequence[str] | None = None) -> None:
    """The ``__main__`` of a measure module: its own context, its results printed."""
    parser = argparse.ArgumentParser(description=(run.__module__ or "").rsplit(".", 1)[-1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:  # before torch loads, here and in every child process
        os.environ.update(thread_env(args.threads))
    from loops_runner.models import tiny

    with tempfile.TemporaryDirectory(prefix="loops-bench-") as scratch:
        home = args.home or Path(scratch) / "home"
        tiny.prepare(home)
        ctx = BenchContext(quick=args.quick, home=home, work=Path(scratch) / "work",
                           rounds=args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS),
                           threads=args.threads)
        started = time.perf_counter()
        results = run(ctx)
        elapsed = time.perf_counter() - started
    for result in results:
        verdict = {True: "met", False: "MISSED", None: "-"}[result.passed]
        print(f"{result.measure}: ours {result.ours:.4g} vs anchor "
              f"{result.anchor if result.anchor is None else f'{result.anchor:.4g}'} "
              f"{result.unit} -> {result.value:.3g} ({result.direction} {result.goal}: "
              f"{verdict}); rounds {result.rounds}")
        print(f"  {result.note}")
    print(json.dumps([r.as_json() for r in results]))
    print(f"wall time {elapsed:.0f}s")
