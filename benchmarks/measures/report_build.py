"""Report build: CPU seconds and size of ``loops-runner report`` on three inputs.

Each report is built in a fresh process (``python -m loops_runner.cli report
<dir>``), as at the end of a run, so the figure includes importing plotly and
matplotlib. Inputs are written in the runner's own file formats
(``tests/report/synthetic.py``): a 150-step SFT run, a 2x2 sweep of 150-step
runs, and an RL run of 100 steps x 16 groups x 8 completions (the rollout
browser's worst case).

* **CPU seconds** (ours only; the build is single-threaded): on a shared
  machine wall time mostly measures the neighbours, CPU time what the build
  needs. Goal: <= 5 s per report, the best of the rounds.
* **size**: bytes of ``report.html`` (plots inline, PNGs embedded). Goal: <= 5 MB.
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.suite import BenchContext, Result

REPO_ROOT = Path(__file__).resolve().parents[2]
GOAL_CPU_S = 5.0
GOAL_MB = 5.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(path: Path) -> tuple[float, float, int]:
    """CPU seconds, MB of report.html and the PNG count of one build."""
    cpu_before = _children_cpu_s()
    result = subprocess.run([sys.executable, "-m", "loops_runner.cli", "report", str(path)],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    cpu = _children_cpu_s() - cpu_before
    found = re.search(r"(\d+) PNGs", result.stdout)
    pngs = int(found.group(1)) if found else 0
    return cpu, (path / "report.html").stat().st_size / 1e6, pngs


def inputs(scratch: Path) -> dict[str, Path]:
    from tests.report.synthetic import write_rl_run, write_sft_run, write_sweep

    return {
        "sft run, 150 steps": write_sft_run(scratch / "sft", steps=150),
        "2x2 sweep": write_sweep(scratch / "sweep", steps=150),
        "rl run, 100 steps x 16 x 8": write_rl_run(scratch / "rl", steps=100, groups=16,
                                                   group_size=8),
    }


def run(ctx: BenchContext) -> list[Result]:
    rounds = 1 if ctx.quick else min(ctx.rounds, 3)
    results: list[Result] = []
    for name, path in inputs(ctx.scratch("report_build")).items():
        started = time.perf_counter()
        builds = [build(path) for _ in range(rounds)]
        wall = (time.perf_counter() - started) / rounds
        cpus = [cpu for cpu, _, _ in builds]
        size, pngs = builds[-1][1], builds[-1][2]
        note = (f"loops-runner report in a fresh process; {pngs} PNGs; wall "
                f"{wall:.1f} s a build; value = best CPU seconds of {rounds}")
        results.append(Result(measure=f"report_build[{name}]", ours=min(cpus), anchor=None,
                              unit="CPU s", value=min(cpus), goal=GOAL_CPU_S,
                              direction="at_most", rounds=[round(c, 2) for c in cpus],
                              note=note))
        results.append(Result(measure=f"report_size[{name}]", ours=size, anchor=None,
                              unit="MB", value=size, goal=GOAL_MB, direction="at_most",
                              rounds=[round(size, 2)], note="bytes of report.html / 1e6"))
    return results


if __name__ == "__main__":
    from benchmarks.measures._support import standalone

    standalone(run)
