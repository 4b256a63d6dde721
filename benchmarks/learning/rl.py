"""Does the ``rl`` recipe learn? The bundled arithmetic task through the real CLI, on the
default model, synchronous and off-policy (``max_steps_off_policy: 1``).

For each mode: per-episode rewards of the first 5 steps vs the last 5 steps (every
group is written to ``rollouts.jsonl``), their means, Welch's t statistic and the
one-sided p-value (scipy when installed, else the normal approximation, which is
close at these sample sizes). Acceptance: last > first with p < 0.01, within 3 minutes
of wall time per run on 2 cores.

    .venv/bin/python -m benchmarks.learning.rl [--home DIR] [--modes 0,1]
        [--task arithmetic|digits] [overrides...]

Extra arguments are passed to the CLI (e.g. ``recipe.learning_rate=1e-3``).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from benchmarks.recipe_runs import run_rl, stop_daemon, write_scratch_task

WINDOW = 5


def episode_rewards(run_dir: Path, steps: range) -> list[float]:
    rewards = []
    for line in (run_dir / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["step"] in steps:
            rewards.extend(r for r in row["rewards"] if r is not None)
    return rewards


def welch(first: list[float], last: list[float]) -> tuple[float, float]:
    """Welch's t of ``last - first`` and the one-sided p-value of "last is larger"."""
    def mean_var(xs: list[float]) -> tuple[float, float]:
        m = sum(xs) / len(xs)
        return m, sum((x - m) ** 2 for x in xs) / (len(xs) - 1)

    m1, v1 = mean_var(first)
    m2, v2 = mean_var(last)
    se = math.sqrt(v1 / len(first) + v2 / len(last))
    if se == 0:
        return (math.inf if m2 > m1 else 0.0), (0.0 if m2 > m1 else 1.0)
    t = (m2 - m1) / se
    try:
        from scipy import stats

        p = float(stats.ttest_ind(last, first, equal_var=False, alternative="greater").pvalue)
    except ImportError:
        p = 0.5 * math.erfc(t / math.sqrt(2))
    return t, p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="data home (default: a temporary one)")
    parser.add_argument("--modes", default="0,1", help="max_steps_off_policy values to run")
    parser.add_argument("--task", choices=["arithmetic", "digits"], default="arithmetic",
                        help="arithmetic: the bundled task (needs a model that knows some "
                             "arithmetic); digits: a scratch reward (share of digits in the "
                             "reply) that any model can learn, a check of the machinery")
    args, overrides = parser.parse_known_args()

    from loops_runner.models import tiny

    home = Path(args.home or tempfile.mkdtemp(prefix="loops-bench-rl-"))
    tiny.prepare(home)
    work = Path(tempfile.mkdtemp(prefix="loops-bench-rl-learn-"))
    if args.task == "digits":
        overrides = [*write_scratch_task(work), *overrides]
    try:
        for k in (int(x) for x in args.modes.split(",")):
            started = time.monotonic()
            name = f"k{k}"
            metrics = run_rl(work, home, [f"recipe.max_steps_off_policy={k}",
                                          "recipe.num_groups_to_log=1000", *overrides], name)
            wall = time.monotonic() - started
            steps = len(metrics)
            first = episode_rewards(work / "runs" / name, range(1, WINDOW + 1))
            last = episode_rewards(work / "runs" / name, range(steps - WINDOW + 1, steps + 1))
            t, p = welch(first, last)
            curve = " ".join(f"{m['rollout/reward_mean']:.2f}" for m in metrics)
            print(f"max_steps_off_policy={k}: {steps} steps in {wall:.0f} s wall "
                  f"(run incl. provisioning); reward first {WINDOW} steps "
                  f"{sum(first) / len(first):.3f} (n={len(first)}), last {WINDOW} "
                  f"{sum(last) / len(last):.3f} (n={len(last)}); Welch t={t:.2f}, "
                  f"one-sided p={p:.2g} -> {'PASS' if p < 0.01 and t > 0 else 'FAIL'}")
            print(f"  reward_mean per step: {curve}", flush=True)
    finally:
        stop_daemon(home)


if __name__ == "__main__":
    main()
