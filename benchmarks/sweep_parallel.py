"""A 4-job sweep on the local backend: sequential (Hydra's basic launcher) vs joblib.

Side by side in one run, both against the same warm daemon and trainer (a
warm-up run starts them first), alternating the two modes on each repeat so
that load from other processes hits both alike. The figure is the wall time of
the whole command, so the parallel mode also pays for its worker processes.

On the local backend every job trains on the same trainer process, so jobs
in parallel mostly take turns on the same CPU cores: expect little gain on a
small machine. The gain of a parallel sweep comes from remote backends
(baseten), where each job is a light client waiting on its own remote trainer.

    .venv/bin/python benchmarks/sweep_parallel.py [--repeats 2] [--steps 20] [--jobs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFT = ["+recipe=sft", "recipe.eval_every=0", "recipe.save_every=0", "recipe.num_final_samples=0",
       "recipe.dataset.num_examples=400", "recipe.dataset.eval_examples=16",
       "recipe.batch_size=8"]
MODES = {
    "sequential": [],
    "joblib": ["hydra/launcher=joblib"],
}


def run_sweep(workdir: Path, home: Path, mode: str, jobs: int, steps: int, tag: str) -> float:
    rates = ",".join(f"{(i + 1) * 1e-3:g}" for i in range(jobs))
    extra = [*MODES[mode], f"hydra.launcher.n_jobs={jobs}"] if MODES[mode] else []
    command = [sys.executable, "-m", "loops_runner", "-m", *extra, *SFT,
               f"recipe.max_steps={steps}", f"recipe.learning_rate={rates}",
               f"hydra.sweep.dir=sweeps/{tag}"]
    env = {**os.environ, "LOOPS_HOME": str(home), "PYTHONPATH": str(REPO),
           "WANDB_MODE": "offline"}
    started = time.monotonic()
    subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
    elapsed = time.monotonic() - started
    lines = (workdir / "sweeps" / tag / "sweep.jsonl").read_text().splitlines()
    if len(lines) != jobs:
        raise SystemExit(f"{mode} sweep {tag} left {len(lines)} lines in sweep.jsonl, not {jobs}")
    return elapsed


def stop_daemon(home: Path) -> None:
    """Stop the benchmark's own daemon and wait for it, before its home is deleted."""
    from loops_runner.runner.local_daemon import find_control_plane, stop_control_plane
    from loops_runner.servers.launch import pid_running

    running = find_control_plane(home)
    if running is None or not stop_control_plane(home):
        return
    deadline = time.monotonic() + 30
    while pid_running(running.pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per job")
    parser.add_argument("--jobs", type=int, default=4, help="sweep jobs (and joblib n_jobs)")
    parser.add_argument("--home", default=None, help="data home (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loops-sweep-bench-") as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        home = Path(args.home) if args.home else Path(tmp) / "home"
        try:
            # Warm-up: start the daemon and the trainer, so both modes find them running.
            run_sweep(workdir, home, "sequential", 1, 1, "warmup")
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for repeat in range(args.repeats):
                order = list(MODES) if repeat % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    seconds = run_sweep(workdir, home, mode, args.jobs, args.steps,
                                        f"{mode}-{repeat}")
                    times[mode].append(seconds)
                    print(f"repeat {repeat}: {mode:<10} {seconds:6.1f} s", flush=True)
        finally:
            if args.home is None:
                stop_daemon(home)
    sequential = statistics.median(times["sequential"])
    parallel = statistics.median(times["joblib"])
    print(f"\n{args.jobs}-job sweep, {args.steps} steps per job, local backend, "
          f"{os.cpu_count()} CPUs (median of {args.repeats}):")
    print(f"  sequential (basic launcher):   {sequential:6.1f} s")
    print(f"  joblib n_jobs={args.jobs}:              {parallel:6.1f} s")
    print(f"  speed-up sequential/joblib:    {sequential / parallel:6.2f}x")


if __name__ == "__main__":
    main()
