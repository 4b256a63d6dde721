"""A sweep on the local backend: joblib's parallel launcher vs Hydra's basic (sequential) one.

Both modes run the same N-job SFT sweep (``python -m loops_runner -m ...``, one
learning rate per job) against the same warm daemon and trainer (a one-job
warm-up sweep starts them first), rounds alternating the order. The figure is
the wall time of the whole command, so the parallel mode also pays for its
worker processes.

* **ours**: ``hydra/launcher=joblib hydra.launcher.n_jobs=N``.
* **anchor**: the basic launcher, one job after another.

value = median per-round speed-up (sequential / joblib), reported, no goal: on
the local backend every job trains on the same trainer process, so jobs in
parallel mostly take turns on the same cores and little gain is expected on a
small machine; the gain of a parallel sweep comes from hosted backends, where
each job is a light client waiting on its own remote trainer.

Minutes of CPU: left out of ``--quick`` unless ``--only sweep_parallel`` names
it (then 2 jobs of 5 steps, 1 round; full: 4 jobs of 20 steps, up to 3 rounds).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from benchmarks.measures._support import interleave, paired
from benchmarks.recipe_runs import run_command, stop_daemon
from benchmarks.suite import BenchContext, Result

SFT = ["+recipe=sft", "recipe.eval_every=0", "recipe.save_every=0",
       "recipe.num_final_samples=0", "recipe.dataset.num_examples=400",
       "recipe.dataset.eval_examples=16", "recipe.batch_size=8", "report=false"]


def run_sweep(work: Path, home: Path, launcher: list[str], jobs: int, steps: int,
              tag: str) -> float:
    """Wall seconds of one sweep command; checks every job finished."""
    rates = ",".join(f"{(i + 1) * 1e-3:g}" for i in range(jobs))
    elapsed = run_command(["-m", *launcher, *SFT, f"recipe.max_steps={steps}",
                           f"recipe.learning_rate={rates}", f"hydra.sweep.dir=sweeps/{tag}"],
                          cwd=work, home=home, timeout=None)
    lines = (work / "sweeps" / tag / "sweep.jsonl").read_text().splitlines()
    if len(lines) != jobs:
        raise RuntimeError(f"sweep {tag} left {len(lines)} lines in sweep.jsonl, not {jobs}")
    return elapsed


def run(ctx: BenchContext) -> list[Result]:
    jobs, steps, rounds = (2, 5, 1) if ctx.quick else (4, 20, min(ctx.rounds, 3))
    work = ctx.scratch("sweep_parallel")
    home = work / "home"  # its own daemon, stopped at the end
    from loops_runner.models import tiny

    tiny.prepare(home)
    counter = itertools.count()
    joblib = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    try:
        run_sweep(work, home, [], 1, 1, "warmup")
        values = interleave(rounds, {
            "joblib": lambda: run_sweep(work, home, joblib, jobs, steps,
                                        f"joblib-{next(counter)}"),
            "sequential": lambda: run_sweep(work, home, [], jobs, steps,
                                            f"sequential-{next(counter)}"),
        })
    finally:
        stop_daemon(home)
    note = (f"{jobs}-job SFT sweep, {steps} steps of 8 per job, local backend, warm daemon; "
            "wall time of the command; value = median per-round sequential/joblib")
    return [paired("sweep_parallel", values["joblib"], values["sequential"], unit="s",
                   goal=None, direction="report", note=note, invert=True)]


if __name__ == "__main__":
    from benchmarks.measures._support import standalone

    standalone(run)
