"""Side by side with TRL: what a user would run instead of this runner.

Rows (seconds per optimizer step, steps 2..N of each run; value = median of the
per-round anchor/ours, so higher is faster for us):

* ``anchors[sft]``: ``+recipe=sft`` through the CLI vs TRL ``SFTTrainer``;
* ``anchors[grpo sync]`` / ``anchors[grpo off-policy]``: ``+recipe=rl`` with
  ``max_steps_off_policy=0`` / ``1`` vs TRL ``GRPOTrainer``;
* ``anchors[dpo]``: ``+recipe=dpo`` vs TRL ``DPOTrainer``;
* ``anchors[rl limit]``: our off-policy step over the slower of bare sampling
  (``generate`` of the same 8 x 8 x 12-token batch) and bare training (one PEFT
  + AdamW step on those 64 sequences), each alone in this process with one
  thread, as each of our servers has in the off-policy run; goal <= 1.2;
* ``learning[...]``: beside each speed, the learning figure of the same runs
  (SFT train loss, GRPO mean reward, DPO preference accuracy, mean over the last
  half of the steps, median over rounds): ours minus TRL's (TRL's minus ours for
  the loss), goal >= minus a tolerance set from the round-to-round spread, so a
  faster row never stands for a run that learns less.

Rounds: the sides of one comparison run back to back, their order rotating from
round to round (an SFT pair, then the three GRPO runs and the bare RL batch, then
a DPO pair); a ratio's round pairs figures taken minutes apart at most.

Settings are matched and written into each row's note: the built-in pretrained
``tiny``, LoRA r=16 (alpha 32, q/k/v/o/gate/up/down), the same task-registry
rows, batch, lengths, steps, learning rate and schedule, AdamW betas (0.9, 0.95),
clipping 1.0. Our runs go through the real CLI in a home whose daemon and servers
a warm-up run started; TRL runs in this process.

Threads: SFT, DPO and synchronous GRPO: torch's default (every core) in TRL and
in our trainer and sampler; off-policy GRPO: one thread in each of our two
servers (they run at once; docs/rl.md "Threads on a small CPU"), TRL as before.

``trl`` is optional (``pip install -e '.[anchors]'``); without it the measure is
skipped with one line. ``--quick`` leaves it out unless ``--only anchors`` names
it (then 1 round of shorter runs).
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measures._support import interleave, paired, standalone
from benchmarks.suite import BenchContext, Result, Skipped, median

GOALS = {"sft": 1.5, "grpo sync": 2.0, "grpo off-policy": 3.0, "dpo": 1.5}
LIMIT_GOAL = 1.2
SEED = 0
COMMON = ["report=false"]


@dataclass(frozen=True)
class Sizes:
    sft_steps: int
    grpo_steps: int
    dpo_steps: int
    rounds: int


def sizes(ctx: BenchContext) -> Sizes:
    if ctx.quick:
        return Sizes(sft_steps=10, grpo_steps=5, dpo_steps=8, rounds=1)
    return Sizes(sft_steps=30, grpo_steps=12, dpo_steps=20, rounds=min(ctx.rounds, 3))


# Matched settings (the recipe's defaults unless said): one source for both sides.
SFT = {"batch_size": 32, "learning_rate": 2e-3, "warmup_steps": 5, "min_lr_ratio": 0.1,
       "max_length": 256, "num_examples": 2000, "eval_examples": 64}
GRPO = {"groups": 8, "group_size": 8, "max_tokens": 12, "learning_rate": 1e-3,
        "num_problems": 2000}
DPO = {"batch_size": 32, "beta": 0.1, "learning_rate": 1e-3, "warmup_steps": 5,
       "min_lr_ratio": 0.1, "max_length": 256}


@dataclass
class Run:
    """One run of either side: seconds per step (steps 2..N) and the learning figure."""

    step_s: float
    learning: float
    extra: dict[str, float]


def late_mean(values: list[float]) -> float:
    """Mean over the last half of a run's steps (the learning figure)."""
    tail = values[len(values) // 2:]
    return sum(tail) / len(tail)


def ours(work: Path, home: Path, recipe: str, overrides: list[str], name: str, key: str,
         threads: int | None) -> Run:
    from benchmarks.recipe_runs import run_recipe

    metrics = run_recipe(work, home, recipe, [*COMMON, *overrides], name, threads=threads)
    steps = [m for m in metrics if m.get("step", 0) >= 1 and "time/step_s" in m]
    later = [m for m in steps if m["step"] >= 2]
    extra: dict[str, float] = {}
    for field in ("time/sample_s", "time/train_s"):
        if later and field in later[0]:
            extra[field] = statistics.fmean(m[field] for m in later)
    return Run(statistics.fmean(m["time/step_s"] for m in later),
               late_mean([m[key] for m in steps if key in m]), extra)


def theirs(trace: Any) -> Run:
    return Run(statistics.fmean(trace.step_s), late_mean(trace.learning), {})


def run(ctx: BenchContext) -> list[Result]:
    if importlib.util.find_spec("trl") is None:
        raise Skipped("trl is not installed: pip install -e '.[anchors]' to compare with TRL")
    from benchmarks.measures import _trl as trl
    from benchmarks.recipe_runs import stop_daemon
    from loops_runner import tasks
    from loops_runner.data.preferences import task_pairs
    from loops_runner.models import tiny
    from loops_runner.rl.envs.tasks import DEFAULT_TASK_FAMILIES

    size = sizes(ctx)
    work = ctx.scratch("anchors")
    # Two homes, so each daemon's servers keep the thread cap they started with.
    home_all, home_one = work / "home-all-threads", work / "home-1-thread"
    model_path = str(tiny.prepare(home_all))
    tiny.prepare(home_one)
    all_threads = ctx.threads

    sft_over = [f"recipe.max_steps={size.sft_steps}", f"recipe.batch_size={SFT['batch_size']}",
                f"recipe.learning_rate={SFT['learning_rate']}",
                f"recipe.warmup_steps={SFT['warmup_steps']}",
                f"recipe.min_lr_ratio={SFT['min_lr_ratio']}", "recipe.lr_schedule=cosine",
                f"recipe.dataset.max_length={SFT['max_length']}",
                f"recipe.dataset.num_examples={SFT['num_examples']}",
                f"recipe.dataset.eval_examples={SFT['eval_examples']}",
                "recipe.eval_every=0", "recipe.evaluators=[]", "recipe.save_every=0",
                "recipe.num_final_samples=0", f"seed={SEED}"]
    grpo_over = [f"recipe.max_steps={size.grpo_steps}",
                 f"recipe.groups_per_batch={GRPO['groups']}",
                 f"recipe.group_size={GRPO['group_size']}",
                 f"recipe.max_tokens={GRPO['max_tokens']}",
                 f"recipe.learning_rate={GRPO['learning_rate']}", "recipe.kl_penalty_coef=0",
                 "recipe.save_every=0", "recipe.num_groups_to_log=0", f"seed={SEED}"]
    dpo_pairs = size.dpo_steps * DPO["batch_size"]
    dpo_over = [f"recipe.max_steps={size.dpo_steps}", f"recipe.batch_size={DPO['batch_size']}",
                f"recipe.beta={DPO['beta']}", f"recipe.learning_rate={DPO['learning_rate']}",
                f"recipe.warmup_steps={DPO['warmup_steps']}",
                f"recipe.min_lr_ratio={DPO['min_lr_ratio']}", "recipe.lr_schedule=cosine",
                f"recipe.dataset.max_length={DPO['max_length']}",
                f"recipe.dataset.num_pairs={dpo_pairs}", "recipe.eval_every=0",
                "recipe.save_every=0", "recipe.evaluators=[]", f"seed={SEED}"]

    sft_rows = trl.sft_rows(model_path, SFT["num_examples"], SFT["eval_examples"],
                            SFT["max_length"], SEED)
    task_rows = tasks.sample_rows(GRPO["num_problems"], split="train",
                                  families=list(DEFAULT_TASK_FAMILIES), difficulties=[1, 2],
                                  seed=SEED)
    pairs = task_pairs(dpo_pairs, "train", SEED)
    counter = 0

    def name(label: str) -> str:
        nonlocal counter
        counter += 1
        return f"{label}-{counter}"

    sides: dict[str, Callable[[], Run]] = {
        "sft ours": lambda: ours(work, home_all, "sft", sft_over, name("sft"), "train/loss",
                                 all_threads),
        "sft trl": lambda: theirs(trl.sft(
            model_path, sft_rows, batch_size=SFT["batch_size"], steps=size.sft_steps,
            learning_rate=SFT["learning_rate"], warmup_steps=SFT["warmup_steps"],
            min_lr_ratio=SFT["min_lr_ratio"], max_length=SFT["max_length"], seed=SEED)),
        "grpo sync": lambda: ours(work, home_all, "rl",
                                  [*grpo_over, "recipe.max_steps_off_policy=0"], name("rl0"),
                                  "rollout/reward_mean", all_threads),
        "grpo off-policy": lambda: ours(work, home_one, "rl",
                                        [*grpo_over, "recipe.max_steps_off_policy=1"],
                                        name("rl1"), "rollout/reward_mean", 1),
        "grpo trl": lambda: theirs(trl.grpo(
            model_path, task_rows, groups=GRPO["groups"], group_size=GRPO["group_size"],
            max_tokens=GRPO["max_tokens"], steps=size.grpo_steps,
            learning_rate=GRPO["learning_rate"], seed=SEED)),
        "dpo ours": lambda: ours(work, home_all, "dpo", dpo_over, name("dpo"), "dpo/accuracy",
                                 all_threads),
        "dpo trl": lambda: theirs(trl.dpo(
            model_path, pairs, batch_size=DPO["batch_size"], steps=size.dpo_steps,
            beta=DPO["beta"], learning_rate=DPO["learning_rate"],
            warmup_steps=DPO["warmup_steps"], min_lr_ratio=DPO["min_lr_ratio"],
            max_length=DPO["max_length"], seed=SEED)),
        "rl limit": lambda: bare_limit(model_path, task_rows, GRPO["groups"],
                                       GRPO["group_size"], GRPO["max_tokens"]),
    }
    try:
        # Warm-ups: each home's daemon, trainer and sampler start here, not in a round.
        ours(work, home_all, "sft", [*sft_over, "recipe.max_steps=2"], name("warm"),
             "train/loss", all_threads)
        ours(work, home_all, "rl", [*grpo_over, "recipe.max_steps=2"], name("warm"),
             "rollout/reward_mean", all_threads)
        ours(work, home_one, "rl", [*grpo_over, "recipe.max_steps=2",
                                    "recipe.max_steps_off_policy=1"], name("warm"),
             "rollout/reward_mean", 1)
        runs = grouped_rounds(size.rounds, sides, GROUPS)
    finally:
        stop_daemon(home_all)
        stop_daemon(home_one)
    return rows(runs, size, all_threads)


# Sides compared with each other run back to back (the order rotating from round
# to round), so a slow spell on this shared machine lands on both figures of a ratio.
GROUPS = (("sft ours", "sft trl"),
          ("grpo sync", "grpo off-policy", "grpo trl", "rl limit"),
          ("dpo ours", "dpo trl"))


def grouped_rounds(rounds: int, sides: dict[str, Callable[[], Run]],
                   groups: tuple[tuple[str, ...], ...]) -> dict[str, list[Run]]:
    """``interleave`` within each group, one group after the other in every round."""
    values: dict[str, list[Run]] = {name: [] for group in groups for name in group}
    for index in range(rounds):
        for group in groups:
            for name, found in interleave(1, {name: sides[name]
                                              for name in _rotated(group, index)}).items():
                values[name] += found
    return values


def _rotated(names: tuple[str, ...], by: int) -> tuple[str, ...]:
    shift = by % len(names)
    return names[shift:] + names[:shift]


def bare_limit(model_path: str, task_rows: list[dict[str, Any]], groups: int,
               group_size: int, max_tokens: int) -> Run:
    """The slower of bare sampling and bare training of one RL batch, one thread each.

    ``step_s`` is the slower of the two; ``extra`` keeps both. The model and its first
    (untimed) pass are made once per process: only the steady state is compared.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        key = (model_path, groups, group_size, max_tokens)
        if key not in _BARE:
            _BARE[key] = BareRL(model_path, task_rows[:groups], group_size, max_tokens)
            _BARE[key].sample_and_train()
        sample_s, train_s = _BARE[key].sample_and_train()
    finally:
        torch.set_num_threads(threads)
    return Run(max(sample_s, train_s), 0.0, {"sample_s": sample_s, "train_s": train_s})


class BareRL:
    """``generate`` of ``group_size`` completions per prompt with a KV cache, then one
    PEFT + AdamW step on the sampled sequences: what one RL step has to compute."""

    def __init__(self, model_path: str, rows: list[dict[str, Any]], group_size: int,
                 max_tokens: int) -> None:
        from benchmarks.measures._trainer import PeftLoop
        from benchmarks.measures._trl import RANK, _tokenizer
        from loops_runner import tasks

        self.loop = PeftLoop(model_path, RANK)
        self.tokenizer = _tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        prompts = [self.tokenizer.apply_chat_template(tasks.as_messages(r), tokenize=False,
                                                      add_generation_prompt=True) for r in rows]
        self.encoded = self.tokenizer(prompts, return_tensors="pt", padding=True,
                                      add_special_tokens=False)
        self.group_size, self.max_tokens = group_size, max_tokens

    def sample_and_train(self) -> tuple[float, float]:
        import torch

        start = time.perf_counter()
        with torch.no_grad():
            out = self.loop.model.generate(
                **self.encoded, do_sample=True, temperature=1.0, top_p=1.0,
                max_new_tokens=self.max_tokens, min_new_tokens=self.max_tokens,
                num_return_sequences=self.group_size,
                pad_token_id=self.tokenizer.pad_token_id)
        sample_s = time.perf_counter() - start
        start = time.perf_counter()
        self.loop.step(out)
        return sample_s, time.perf_counter() - start


_BARE: dict[tuple[Any, ...], BareRL] = {}

LEARNING = {  # row label: (ours side, TRL side, what, higher is better, tolerance)
    "sft": ("sft ours", "sft trl", "train loss", False, 0.1),
    "grpo sync": ("grpo sync", "grpo trl", "mean reward", True, 0.1),
    "grpo off-policy": ("grpo off-policy", "grpo trl", "mean reward", True, 0.1),
    "dpo": ("dpo ours", "dpo trl", "preference accuracy", True, 0.1),
}


def rows(runs: dict[str, list[Run]], size: Sizes, threads: int | None) -> list[Result]:
    cores = f"{threads} torch threads" if threads else "torch's default threads (every core)"
    notes = {
        "sft": f"+recipe=sft vs SFTTrainer: tiny, LoRA r=16 a32 all 7 projections; synthetic "
               f"task chats ({SFT['num_examples']}, {SFT['eval_examples']} held out), "
               f"assistant-only loss, max_length {SFT['max_length']}, batch "
               f"{SFT['batch_size']}, {size.sft_steps} steps, lr {SFT['learning_rate']} "
               f"cosine (warmup {SFT['warmup_steps']}, floor {SFT['min_lr_ratio']}), no eval; "
               f"{cores}",
        "grpo sync": f"+recipe=rl max_steps_off_policy=0 vs GRPOTrainer: tiny, LoRA r=16; task "
                     f"registry prompts (larger, capitals, count_letters, reverse, difficulty "
                     f"1-2), {GRPO['groups']} prompts x {GRPO['group_size']} samples x "
                     f"{GRPO['max_tokens']} new tokens, temperature 1, lr "
                     f"{GRPO['learning_rate']} constant, no KL, rewards centred per group "
                     f"(TRL scale_rewards=none), {size.grpo_steps} steps; {cores}",
        "grpo off-policy": f"as grpo sync but max_steps_off_policy=1, one torch thread in each "
                           f"of our trainer and sampler (TRL: {cores})",
        "dpo": f"+recipe=dpo vs DPOTrainer: tiny, LoRA r=16; task-registry pairs "
               f"({size.dpo_steps * DPO['batch_size']}), beta {DPO['beta']}, batch "
               f"{DPO['batch_size']} pairs, max_length {DPO['max_length']}, {size.dpo_steps} "
               f"steps, lr {DPO['learning_rate']} cosine; reference logprobs computed up front "
               f"on both sides (TRL precompute_ref_log_probs); {cores}",
    }
    results: list[Result] = []
    for label, (our_side, their_side, what, higher, tolerance) in LEARNING.items():
        ours_runs, their_runs = runs[our_side], runs[their_side]
        results.append(paired(
            f"anchors[{label}]", [r.step_s for r in ours_runs],
            [r.step_s for r in their_runs], unit="s/step", goal=GOALS[label],
            direction="at_least", invert=True,
            note=notes[label] + "; value = median per-round TRL/ours s/step (steps 2..N)"))
        ours_l = [r.learning for r in ours_runs]
        their_l = [r.learning for r in their_runs]
        gaps = [(o - t) if higher else (t - o) for o, t in zip(ours_l, their_l, strict=True)]
        results.append(Result(
            measure=f"learning[{label}]", ours=median(ours_l), anchor=median(their_l),
            unit=what, value=median(gaps), goal=-tolerance, direction="at_least",
            rounds=[round(g, 4) for g in gaps],
            note=f"{what}, mean over the last half of the steps of the same runs; value = "
                 f"ours {'-' if higher else 'below'} TRL's ({'higher' if higher else 'lower'} "
                 f"is better), within {tolerance} passes"))
    limit = runs["rl limit"]
    off = runs["grpo off-policy"]
    samples = [r.extra["sample_s"] for r in limit]
    trains = [r.extra["train_s"] for r in limit]
    results.append(paired(
        "anchors[rl limit]", [r.step_s for r in off], [r.step_s for r in limit],
        unit="s/step", goal=LIMIT_GOAL, direction="at_most",
        note=f"our off-policy step vs max(bare generate {median(samples):.3f} s, bare PEFT "
             f"train step {median(trains):.3f} s) of the same {GRPO['groups']}x"
             f"{GRPO['group_size']}x{GRPO['max_tokens']} batch, one thread each; ours: "
             + profile(runs) + "; value = median per-round ours/limit"))
    return results


def profile(runs: dict[str, list[Run]]) -> str:
    """Where our RL steps' time goes, from the recipe's own time/* metrics."""
    parts = []
    for label in ("grpo sync", "grpo off-policy"):
        side = runs[label]
        step = median([r.step_s for r in side])
        sample = median([r.extra.get("time/sample_s", 0.0) for r in side])
        train = median([r.extra.get("time/train_s", 0.0) for r in side])
        parts.append(f"{label} step {step:.3f} s = sample {sample:.3f} + train {train:.3f} "
                     f"+ rest {step - sample - train:.3f} (publish, waits, client)"
                     if label == "grpo sync" else
                     f"{label} step {step:.3f} s (sampling {sample:.3f} s overlapped, "
                     f"train {train:.3f} s)")
    return "; ".join(parts)


if __name__ == "__main__":
    standalone(run)
