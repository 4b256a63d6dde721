"""RL steps/s: off-policy (``max_steps_off_policy=1``) vs synchronous, same batch and seed.

The ``rl`` recipe through the real CLI (``python -m loops_runner +recipe=rl``, a
scratch digit-share reward on a prompt file), in a home of its own whose local
daemon, trainer and sampler are warmed up by a first short run:

* **ours**: ``recipe.max_steps_off_policy=1``: the next batch is sampled while
  this one trains.
* **anchor**: ``recipe.max_steps_off_policy=0``: sample, train, publish, in turn.

Steps/s counts steps 2..N (step 1 includes the first publish, and in the quick
run, which skips the warm-up run, the start of the daemon and its servers).
Each round runs both (order alternating, seed = round); value = median of
per-round ours/anchor.
Goal: >= 1.3x.

A second row holds the RL diagnostics (``loops_runner.rl.diagnostics``: KL estimators,
importance ratios, ESS, entropy, clip fraction, the divergent-token table) against the
step they run in: the recipe logs their own time as ``time/diagnostics_s``; value =
their sum over ``time/step_s``'s sum, steps 2..N of every run (median per round).
Goal: <= 5%.

Threads: ``ctx.threads``, or 1 when unset, for this process, the daemon and the
servers it starts: off-policy runs the trainer and the sampler at once, and with
torch's default thread count on a 2-core machine they stall each other's thread
barriers (docs/rl.md, "Threads on a small CPU"). Quick: 1 round of 3 steps of 4
groups (full: up to 3 rounds of 8 steps of 8 groups).
"""

from __future__ import annotations

from benchmarks.measures._support import interleave, paired, standalone
from benchmarks.suite import BenchContext, Result, median

GOAL = 1.3
DIAGNOSTICS_GOAL = 0.05


def diagnostics_share(metrics: list[dict]) -> float:
    later = [m for m in metrics if m["step"] >= 2]
    return sum(m.get("time/diagnostics_s", 0.0) for m in later) / \
        sum(m["time/step_s"] for m in later)


def steps_per_second(metrics: list[dict]) -> float:
    later = [m["time/step_s"] for m in metrics if m["step"] >= 2]
    return len(later) / sum(later)


def run(ctx: BenchContext) -> list[Result]:
    from benchmarks.recipe_runs import run_rl, stop_daemon, write_scratch_task
    from loops_runner.models import tiny

    threads = ctx.threads or 1
    steps, rounds, groups = (3, 1, 4) if ctx.quick else (8, min(ctx.rounds, 3), 8)
    work = ctx.scratch("rl_step")
    home = work / "home"
    tiny.prepare(home)
    common = [*write_scratch_task(work), f"recipe.max_steps={steps}",
              f"recipe.groups_per_batch={groups}", "recipe.group_size=8", "recipe.max_tokens=16",
              "recipe.save_every=0", "recipe.num_groups_to_log=0",
              # The HTML report (plots) comes after the last step: seconds no figure uses.
              "report=false"]
    counter = 0
    shares: list[float] = []

    def steps_run(k: int) -> float:
        nonlocal counter
        counter += 1
        metrics = run_rl(work, home, [*common, f"recipe.max_steps_off_policy={k}",
                                      f"seed={counter // 2}"], f"k{k}-{counter}",
                         threads=threads)
        shares.append(diagnostics_share(metrics))
        return steps_per_second(metrics)

    try:
        if not ctx.quick:
            # Starts the daemon (inheriting the thread cap), trainer and sampler. The
            # quick run skips it: the figure counts steps 2..N only, so the first
            # measured run paying those starts leaves the ratio alone.
            run_rl(work, home, [*common, "recipe.max_steps=1"], "warmup", threads=threads)
        values = interleave(rounds, {"off_policy": lambda: steps_run(1),
                                     "sync": lambda: steps_run(0)})
    finally:
        stop_daemon(home)
    return [diagnostics_result(shares, steps, groups),
            paired("rl_step", values["off_policy"], values["sync"], unit="steps/s",
                   goal=GOAL, direction="at_least",
                   note=f"rl recipe via the CLI, {steps} steps of {groups} groups x 8 samples x 16 "
                        f"tokens; max_steps_off_policy=1 vs 0; steps/s over steps 2..N; "
                        f"{threads} torch thread(s) in the runner and its servers "
                        f"({'ctx.threads' if ctx.threads else 'default 1 for this measure'}); "
                        "value = median per-round ratio")]


def diagnostics_result(shares: list[float], steps: int, groups: int) -> Result:
    return Result(measure="rl_step: diagnostics / step time", ours=median(shares), anchor=None,
                  unit="fraction", value=median(shares), goal=DIAGNOSTICS_GOAL,
                  direction="at_most", rounds=shares,
                  note=f"time/diagnostics_s over time/step_s, steps 2..{steps} of every run "
                       f"above ({groups} groups x 8 samples x 16 tokens, sync and "
                       "off-policy); median over runs")


if __name__ == "__main__":
    standalone(run)
