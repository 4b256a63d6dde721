"""Synthetic run and sweep dirs in the runner's file formats: the report's input.

The RL and DPO recipes log under the metric names of their issues; these files
stand in for them (and for the odd cases: killed runs, torn lines, missing keys)
so the report is tested on every shape of input without training anything.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import yaml

START_WALL = 1_790_000_000.0


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_run_record(run_dir: Path, *, recipe: str, status: str = "completed",
                     final: dict[str, Any] | None = None, steps: int = 0,
                     run_id: str = "run-0123456789abcdef") -> dict[str, Any]:
    record = {
        "config_hash": "f" * 64, "seed": 0, "run_name": run_dir.name,
        "recipe": f"loops_runner.recipes.{recipe}", "backend": "local", "base_model": "tiny",
        "status": status, "package_versions": {"torch": "2.13.0", "loops-runner": "0.1.0"},
        "git_sha": "abc1234", "session_id": "sess-0001", "run_ids": [run_id],
        "run_id": run_id, "wandb_id": None,
        "checkpoints": [{"step": s, "path": f"bt://loops:{run_id}/weights/step-{s:06d}",
                         "cursor": {"step": s}, "rng_state": None,
                         "saved_at": START_WALL + s} for s in range(50, steps + 1, 50)],
        "final_metrics": final or {}, "error": None, "attempts": 1,
        "started_at": START_WALL, "finished_at": START_WALL + steps + 5,
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "config.resolved.yaml").write_text(yaml.safe_dump(
        {"seed": 0, "model": {"base_model": "tiny", "rank": 8}, "objective": None,
         "recipe": {"_target_": f"loops_runner.recipes.{recipe}", "learning_rate": 0.002}}))
    return record


def write_sft_run(run_dir: Path, steps: int = 150, *, learning_rate: float = 2e-3,
                  rank: int = 8, eval_every: int = 25, overrides: list[str] | None = None,
                  status: str = "completed") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    speed = learning_rate * 1000 * math.sqrt(rank / 8)
    rows.append({"step": 0, "eval/nll": 5.0, "time/wall": START_WALL})
    for step in range(1, steps + 1):
        loss = 1.5 + 3.5 * math.exp(-speed * step / 60)
        row = {"step": step, "train/loss": loss, "train/tokens": 4000,
               "optim/lr": learning_rate * min(1.0, step / 10),
               "optim/grad_norm": 1.0 / step, "time/step_s": 0.5,
               "time/tokens_per_s": 8000 + step, "time/wall": START_WALL + 0.5 * step}
        if step % eval_every == 0 or step == steps:
            row["eval/nll"] = loss + 0.1
        rows.append(row)
    _write_jsonl(run_dir / "metrics.jsonl", rows)
    final = {k: v for k, v in rows[-1].items() if not k.startswith("time/") and k != "step"}
    write_run_record(run_dir, recipe="sft", status=status, steps=steps,
                     final={**final, "steps": steps} if status == "completed" else None)
    _write_jsonl(run_dir / "samples.jsonl", [
        {"prompt": "What is 2+3?", "reference": "5", "completion": "5"},
        {"prompt": "Reverse <abc>", "reference": "cba", "completion": "cba</script>"},
    ])
    if overrides is not None:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run_dir


def write_rl_run(run_dir: Path, steps: int = 40, *, groups: int = 8,
                 group_size: int = 8) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows, rollouts, divergence = [], [], []
    for step in range(1, steps + 1):
        mean = min(1.0, 0.1 + step / steps)
        divergence.append({"step": step, "tokens": [
            {"token": f"tok{rank}</script>", "context": "What is 2 +", "sequence": rank,
             "position": 9, "sampler_logprob": -1.0, "trainer_logprob": -1.0 - step / rank,
             "diff": -step / rank, "advantage": 0.5} for rank in range(1, 4)]})
        rows.append({"step": step, "rollout/reward_mean": mean, "rollout/reward_std": 0.2,
                     "rollout/frac_mixed": 0.5, "kl/sample_train": 0.001 * step,
                     "kl/reference": 0.01 * step, "train/loss": -mean, "optim/lr": 1e-4,
                     "time/wall": START_WALL + 2 * step})
        for group in range(groups):
            rewards = [float(rng.random() < mean) for _ in range(group_size)]
            group_mean = sum(rewards) / group_size
            rollouts.append({
                "step": step, "policy_version": step - 1, "group": group,
                "prompt": f"What is {group} + {step}?",
                "completions": [f"answer {group + step + rng.randint(-1, 1)}"
                                for _ in range(group_size)],
                "rewards": rewards, "advantages": [r - group_mean for r in rewards]})
        if step % 10 == 0:
            rows[-1]["eval/accuracy"] = mean
    _write_jsonl(run_dir / "metrics.jsonl", rows)
    _write_jsonl(run_dir / "rollouts.jsonl", rollouts)
    _write_jsonl(run_dir / "divergence.jsonl", divergence)
    write_run_record(run_dir, recipe="rl", steps=steps,
                     final={"eval/accuracy": rows[-1].get("eval/accuracy", 0.0)})
    return run_dir


def write_dpo_run(run_dir: Path, steps: int = 30) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"step": step, "dpo/loss": 0.69 - 0.01 * step, "dpo/accuracy": 0.5 + step / 100,
             "dpo/margin": 0.05 * step, "time/wall": START_WALL + step}
            for step in range(1, steps + 1)]
    rows[-1]["eval/dpo/accuracy"] = 0.8
    _write_jsonl(run_dir / "metrics.jsonl", rows)
    write_run_record(run_dir, recipe="dpo", steps=steps, final={"eval/dpo/accuracy": 0.8})
    return run_dir


def write_sweep(sweep_dir: Path, steps: int = 150) -> Path:
    """A finished 2x2 sweep (learning rate x rank) as Hydra and the runner leave it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    number = 0
    for learning_rate in (1e-3, 3e-3):
        for rank in (4, 16):
            overrides = ["+recipe=sft", f"recipe.learning_rate={learning_rate}",
                         f"model.rank={rank}"]
            run_dir = write_sft_run(
                sweep_dir / f"recipe.learning_rate={learning_rate},model.rank={rank}",
                steps, learning_rate=learning_rate, rank=rank, overrides=overrides)
            record = json.loads((run_dir / "run.json").read_text())
            lines.append({"job": number, "overrides": overrides, "status": "completed",
                          "run_dir": str(run_dir), "final_metrics": record["final_metrics"],
                          "error": None, "finished_at": START_WALL})
            number += 1
    _write_jsonl(sweep_dir / "sweep.jsonl", lines)
    return sweep_dir
