"""Does a judge reward teach? The ``rl`` recipe through the real CLI with
``recipe.judge=tiny`` (the default model judges its own replies under a rubric) on a
prompt file, no reward function: the reward is the judge's P("yes").

Per seed: ``eval/reward`` (the judge's mean score of ``group_size`` replies to each
held-out prompt, which no step trains on) before the first step and after the last,
with its std and episode count; Welch's t of after vs before and the one-sided
p-value (scipy). Acceptance: after > before with p < 0.01 on every seed.

    .venv/bin/python -m benchmarks.learning.judge [--home DIR] [--seeds 0,1,2] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.recipe_runs import run_rl, stop_daemon

PROMPTS = ["Tell me about the {}.", "What do you know about {}?", "Describe {} briefly.",
           "Is {} interesting?", "Say something kind about {}."]
TOPICS = ["the sea", "bread", "winter", "a cat", "music", "the moon", "trains", "paper",
          "rivers", "apples", "clocks", "a garden"]
RUBRIC = "Question: {prompt} Reply: {completion} Is this a good reply? Answer yes or no."


def write_prompts(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": template.format(topic)} for template in PROMPTS for topic in TOPICS]
    (work / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def welch_from_stats(before: dict, after: dict) -> tuple[float, float]:
    from scipy import stats

    result = stats.ttest_ind_from_stats(
        after["eval/reward"], after["eval/reward_std"], int(after["eval/episodes"]),
        before["eval/reward"], before["eval/reward_std"], int(before["eval/episodes"]),
        equal_var=False, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="data home (default: a temporary one)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds to run, one run each")
    args, overrides = parser.parse_known_args()

    from loops_runner.models import tiny

    home = Path(args.home or tempfile.mkdtemp(prefix="loops-bench-judge-"))
    tiny.prepare(home)
    work = Path(tempfile.mkdtemp(prefix="loops-bench-judge-learn-"))
    write_prompts(work)
    common = ["recipe.judge=tiny", "recipe.prompts=prompts.jsonl",
              f"recipe.judge_rubric='{RUBRIC}'",
              "recipe.eval_prompts=12", "recipe.eval_every=0", "recipe.max_steps=20",
              "recipe.groups_per_batch=8", "recipe.group_size=8", "recipe.max_tokens=12",
              "recipe.learning_rate=3e-3", "recipe.normalize_advantages_by_std=true",
              "recipe.save_every=0", "report=false"]
    passed = True
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.monotonic()
            metrics = run_rl(work, home, [*common, f"seed={seed}", *overrides], f"seed{seed}")
            wall = time.monotonic() - started
            evals = [m for m in metrics if "eval/reward" in m]
            before, after = evals[0], evals[-1]
            t, p = welch_from_stats(before, after)
            ok = p < 0.01 and t > 0
            passed &= ok
            curve = " ".join(f"{m['rollout/reward_mean']:.3f}" for m in metrics
                             if "rollout/reward_mean" in m)
            print(f"seed {seed}: held-out judge score {before['eval/reward']:.3f} "
                  f"(sd {before['eval/reward_std']:.3f}, n={int(before['eval/episodes'])}) -> "
                  f"{after['eval/reward']:.3f} (sd {after['eval/reward_std']:.3f}, "
                  f"n={int(after['eval/episodes'])}); Welch t={t:.2f}, one-sided p={p:.2g}; "
                  f"{len(curve.split())} steps in {wall:.0f} s -> {'PASS' if ok else 'FAIL'}")
            print(f"  training reward per step: {curve}", flush=True)
    finally:
        stop_daemon(home)
    print("judge learning:", "PASS" if passed else "FAIL")


if __name__ == "__main__":
    main()
