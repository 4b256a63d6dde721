"""DPO learning check: held-out preference accuracy and greedy task accuracy, real CLI.

    python -m benchmarks.learning.dpo [--home DIR] [overrides...]

Acceptance (issue 12, pretrained ``tiny``): ``eval/dpo/accuracy`` rises to
>= 0.8 from the base's, ``eval/accuracy`` does not fall, within 3 minutes
on 2 cores (the wall time includes provisioning; start the daemon warm to see
the training time alone).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.recipe_runs import read_metrics, run_cli, series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="data home (default: LOOPS_HOME)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dpo-learning-"))
    run_dir = workdir / "run"
    wall = run_cli(["+recipe=dpo", *args.overrides], run_dir, cwd=workdir, home=args.home)
    lines = read_metrics(run_dir)
    for name in ("eval/dpo/accuracy", "eval/dpo/margin", "eval/dpo/loss", "eval/accuracy"):
        print(f"{name:22s} " + "  ".join(f"{step}:{value:.3f}"
                                          for step, value in series(lines, name)))
    accuracy = series(lines, "eval/dpo/accuracy")
    task = series(lines, "eval/accuracy")
    print(f"wall {wall:.0f} s; held-out preference accuracy {accuracy[0][1]:.3f} -> "
          f"{accuracy[-1][1]:.3f} (target >= 0.8); greedy task accuracy {task[0][1]:.3f} -> "
          f"{task[-1][1]:.3f} (must not fall)")
    ok = accuracy[-1][1] >= 0.8 and task[-1][1] >= task[0][1] and wall <= 180
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
