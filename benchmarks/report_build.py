"""How long a report takes to build, and how big it is: a run, a 2x2 sweep, an rl run.

Each report is built in a fresh process (``loops-runner report``), as at the end
of a run, so the time includes importing plotly and matplotlib. Targets (issue
14): under 5 s and under 5 MB each.

    python benchmarks/report_build.py                       # synthetic inputs only
    python benchmarks/report_build.py --sft-run outputs/sft/default --sweep multirun/<date>

Without --sft-run / --sweep, 150-step synthetic ones in the runner's file
formats stand in (tests/report/synthetic.py); the rl run is always synthetic
(100 steps x 16 groups x 8 completions) until the rl recipe lands.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.report.synthetic import write_rl_run, write_sft_run, write_sweep  # noqa: E402

TARGET_S, TARGET_BYTES = 5.0, 5_000_000


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build(path: Path) -> tuple[float, float, int, int]:
    """Wall seconds, CPU seconds, bytes of report.html, PNG count of one build."""
    started, cpu_before = time.monotonic(), _children_cpu_s()
    result = subprocess.run([sys.executable, "-m", "loops_runner.cli", "report", str(path)],
                            capture_output=True, text=True, check=True)
    seconds, cpu = time.monotonic() - started, _children_cpu_s() - cpu_before
    pngs = int(re.search(r"(\d+) PNGs", result.stdout).group(1))  # type: ignore[union-attr]
    return seconds, cpu, (path / "report.html").stat().st_size, pngs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-run", type=Path, default=None, help="a 150-step sft run dir")
    parser.add_argument("--sweep", type=Path, default=None, help="a 2x2 sweep dir")
    parser.add_argument("--repeat", type=int, default=3, help="builds per input (best is kept)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="loops-report-bench-"))
    inputs = {
        "sft run (150 steps)": args.sft_run or write_sft_run(scratch / "sft", steps=150),
        "2x2 sweep": args.sweep or write_sweep(scratch / "sweep", steps=150),
        "rl run (100 steps, 16x8 rollouts)": write_rl_run(scratch / "rl", steps=100, groups=16,
                                                          group_size=8),
    }
    # On a shared machine wall time mostly measures the neighbours; CPU time is what the
    # build itself needs (one core: it is single-threaded).
    print(f"{'report':36} {'wall s best/worst':>18} {'CPU s':>6} {'MB':>6} {'PNGs':>5}  "
          "within target (CPU s, MB)")
    ok = True
    for name, path in inputs.items():
        runs = [build(path) for _ in range(args.repeat)]
        walls = [wall for wall, _, _, _ in runs]
        cpu = min(cpu for _, cpu, _, _ in runs)
        size, pngs = runs[-1][2], runs[-1][3]
        within = cpu < TARGET_S and size < TARGET_BYTES
        ok &= within
        print(f"{name:36} {min(walls):8.2f} / {max(walls):5.2f} {cpu:6.2f} {size / 1e6:6.2f} "
              f"{pngs:5d}  {'yes' if within else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
