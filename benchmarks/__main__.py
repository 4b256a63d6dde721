"""``python -m benchmarks``: every measure of ``benchmarks/measures/``, one table, one JSON.

    python -m benchmarks [--quick] [--json out.json] [--only NAME[,NAME]] [--rounds N]
                         [--threads N] [--home DIR]

It prepares one data home with the built-in ``tiny``, finds every module in
``benchmarks/measures/`` (a preferred order first, modules it does not know
after them, so a new measure shows up without editing this file), runs each
one on its own (a measure that raises becomes an ``error`` row and the rest
still run), prints one table and optionally writes the JSON document.

Exit status: 0 whenever every measure ran, goals met or not (the table says
which); 1 when a measure crashed.

torch is not imported here at module level: measures import it lazily, and
the thread count must reach the environment before anyone imports it.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import measures
from benchmarks.suite import BenchContext, Result, Skipped
from benchmarks.table import Failure, Row, Skip, document, render
from loops_runner.servers.launch import CHILD_ENV_DEFAULTS

# Cheap, self-contained measures first, so a quick look at the top of the
# output comes early; modules not named here run after these, by name.
PREFERRED_ORDER = (
    "op_overhead", "training_throughput", "variable_lengths", "memory",
    "startup", "sampling", "streaming", "group_sampling", "weight_sync", "rl_step", "many_runs",
    "report_build", "anchors", "soak", "sweep_parallel",
)
# Names that select another module with --only (rows that share a module's run).
ALIASES = {"mfu": "training_throughput", "learning": "anchors"}
# Measures too long for --quick's ~3 minutes (report_build: three fresh report processes,
# 8-12 s a quick run has no room for): they run there only when --only names them.
FULL_ONLY = {"anchors", "soak", "sweep_parallel", "report_build"}
QUICK_ROUNDS = 3
FULL_ROUNDS = 7


def discover() -> list[str]:
    found = {info.name for info in pkgutil.iter_modules(measures.__path__)
             if not info.name.startswith("_")}
    ordered = [name for name in PREFERRED_ORDER if name in found]
    return ordered + sorted(found - set(ordered))


def select(available: list[str], only: str | None) -> list[str]:
    if not only:
        return available
    wanted = {ALIASES.get(name.strip(), name.strip()) for name in only.split(",") if name.strip()}
    unknown = wanted - set(available)
    if unknown:
        raise SystemExit(f"--only: no measure named {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(available)})")
    return [name for name in available if name in wanted]


def run_measure(name: str, ctx: BenchContext, *, named: bool = False) -> list[Row]:
    """One module's rows; an exception (or a wrong return) becomes an error row,
    ``Skipped`` a skip row with its one line."""
    if ctx.quick and name in FULL_ONLY and not named:
        return [Skip(name, f"left out of --quick (no room in its 3 minutes); "
                           f"--quick --only {name} runs a short version")]
    try:
        module = importlib.import_module(f"{measures.__name__}.{name}")
        results = module.run(ctx)
        if not isinstance(results, list) or not all(isinstance(r, Result) for r in results):
            raise TypeError(f"{name}.run returned {type(results).__name__}, not list[Result]")
        if not results:
            raise ValueError(f"{name}.run returned no results")
        return list(results)
    except Skipped as skipped:
        print(f"[benchmarks] {name} skipped: {skipped}", file=sys.stderr, flush=True)
        return [Skip(name, str(skipped))]
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        return [Failure(name, text)]


def machine_info() -> dict[str, Any]:
    cpu_models: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_models.append(line.split(":", 1)[1].strip())
    except OSError:
        pass
    import torch  # here, not at the top: the thread count is already in the environment

    return {"cpu_model": cpu_models[0] if cpu_models else "unknown",
            "cpu_count": len(cpu_models) or os.cpu_count(),
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small batches and {QUICK_ROUNDS} rounds (fits in ~3 minutes)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--only", default=None, help="comma-separated measure names")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"rounds per measure (default {QUICK_ROUNDS} quick, "
                             f"{FULL_ROUNDS} full)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads here and in the servers started (default: torch's)")
    parser.add_argument("--home", type=Path, default=None,
                        help="data home to use (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = select(discover(), args.only)
    if args.threads:
        # Before torch loads anywhere: this process and every server it starts.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["MKL_NUM_THREADS"] = str(args.threads)
    # The servers get passive OpenMP waiting by default (servers/launch.py);
    # the in-process anchors must run under the same runtime settings.
    for key, value in CHILD_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)

    from loops_runner.models import tiny

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loops-bench-") as scratch:
        home = args.home or Path(scratch) / "home"
        tiny.prepare(home)
        ctx = BenchContext(quick=args.quick, home=home, work=Path(scratch) / "work",
                           rounds=rounds, threads=args.threads)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        rows: list[Row] = []
        seconds: dict[str, float] = {}
        for name in names:
            print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
            begin = time.perf_counter()
            rows += run_measure(name, ctx, named=bool(args.only))
            seconds[name] = round(time.perf_counter() - begin, 1)
            print(f"[benchmarks] {name} done in {seconds[name]:.0f}s", file=sys.stderr,
                  flush=True)
    print(render(rows, rounds=rounds, quick=args.quick))
    print(f"wall time {time.perf_counter() - started:.0f}s")
    if args.json is not None:
        doc = document(rows, machine=machine_info(), quick=args.quick, rounds=rounds,
                       seconds=seconds)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(isinstance(row, Failure) for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
