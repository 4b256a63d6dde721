"""Metrics: one JSON line per step in ``metrics.jsonl``, rich progress, and W&B.

Names are stable and grouped: ``train/…``, ``eval/…``, ``rollout/…``,
``optim/…``, ``time/…``, ``tokens/…`` (trained, prompt, sampled: per line and
``_total``; what a hosted run is billed on) and, with ``prices`` set, ``cost/usd`` and
``cost/usd_total`` (those tokens at your rates).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from loops_runner.runner.config import PricesSection, WandbSection
from loops_runner.sdk.usage import TokenCounts, token_usage

METRICS_FILE = "metrics.jsonl"
TOKEN_KINDS = ("trained", "prompt", "sampled")  # the fields of TokenCounts, in order


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a resumed run logs those steps again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def latest_values(path: Path) -> dict[str, Any]:
    """The last value of every metric in a metrics file (a resumed run's history so far)."""
    latest: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                latest.update({k: v for k, v in json.loads(line).items() if k != "step"})
    return latest


class MetricsLogger:
    def __init__(self, run_dir: Path, wandb_cfg: WandbSection, *, run_name: str,
                 config: dict[str, Any], wandb_id: str | None = None,
                 console: Console | None = None, prices: PricesSection | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task: Any = None
        self._wandb_run: Any = None
        self._status: dict[str, str] = {}
        self.wandb_id = wandb_id
        self.last_step: int | None = None  # the last step logged by this process
        self.prices = prices or PricesSection()
        # Token counts per line and in total; a resumed run's totals go on
        # from the last line kept (the checkpoint's step).
        self._tokens_seen = token_usage()
        earlier = latest_values(self.path)
        self._tokens_total = TokenCounts(
            *(int(earlier.get(f"tokens/{kind}_total") or 0) for kind in TOKEN_KINDS))
        if wandb_cfg.mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity,
                name=wandb_cfg.name or run_name, id=wandb_id, resume="allow",
                mode=wandb_cfg.mode, dir=str(run_dir), config=config,
            )
            self.wandb_id = self._wandb_run.id

    # -- logging -------------------------------------------------------------

    def _token_metrics(self) -> dict[str, int | float]:
        now = token_usage()
        delta, self._tokens_seen = now - self._tokens_seen, now
        self._tokens_total = self._tokens_total + delta
        per_line, total = delta.as_dict(), self._tokens_total.as_dict()
        metrics: dict[str, int | float] = {
            **{f"tokens/{kind}": per_line[kind] for kind in TOKEN_KINDS},
            **{f"tokens/{kind}_total": total[kind] for kind in TOKEN_KINDS}}
        if self.prices.priced:
            # From the totals, so a resumed run's cost goes on from its kept lines.
            metrics["cost/usd"] = self.prices.cost_usd(per_line)
            metrics["cost/usd_total"] = self.prices.cost_usd(total)
        return metrics

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """One line: ``metrics``, the wall time and the tokens used since the last line."""
        self.last_step = step
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()},
                  **self._token_metrics(), "time/wall": round(time.time(), 3)}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=step)
        self._update_progress(step, metrics)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]],
                  step: int | None = None) -> None:
        """A W&B table; with ``step``, beside that step's metrics (W&B merges a step's
        logs, and a step-less log after a stepped one would push later steps back)."""
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    # -- console -------------------------------------------------------------

    def start_progress(self, total: int, completed: int = 0) -> None:
        self._progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=completed,
                                             status="")
        self._progress.start()

    def _update_progress(self, step: int, metrics: dict[str, Any]) -> None:
        if self._progress is None:
            return
        # Keep the last value of each shown metric: eval only comes every N steps.
        for key, label, fmt in (("train/loss", "loss", "{:.4f}"), ("eval/nll", "eval", "{:.4f}"),
                                ("rollout/reward_mean", "reward", "{:.3f}"),
                                ("time/tokens_per_s", "tok/s", "{:.0f}")):
            if isinstance(metrics.get(key), int | float):
                self._status[label] = f"{label} {fmt.format(metrics[key])}"
        self._progress.update(self._task, completed=step, status="  ".join(self._status.values()))

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def print(self, *objects: Any) -> None:
        self.console.print(*objects)

    def close(self) -> None:
        self.stop_progress()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
