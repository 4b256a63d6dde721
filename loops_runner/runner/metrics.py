"""Metrics: one JSON line per step in ``metrics.jsonl``, rich progress, and W&B.

Names are stable and grouped: ``train/…``, ``eval/…``, ``rollout/…``,
``optim/…``, ``time/…``.
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

from loops_runner.runner.config import WandbSection

METRICS_FILE = "metrics.jsonl"


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


class MetricsLogger:
    def __init__(self, run_dir: Path, wandb_cfg: WandbSection, *, run_name: str,
                 config: dict[str, Any], wandb_id: str | None = None,
                 console: Console | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        self.console = console or Console()
        self._progress: Progress | None = None
        self._task: Any = None
        self._wandb_run: Any = None
        self._status: dict[str, str] = {}
        self.wandb_id = wandb_id
        if wandb_cfg.mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity,
                name=wandb_cfg.name or run_name, id=wandb_id, resume="allow",
                mode=wandb_cfg.mode, dir=str(run_dir), config=config,
            )
            self.wandb_id = self._wandb_run.id

    # -- logging -------------------------------------------------------------

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()},
                  "time/wall": round(time.time(), 3)}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k != "step"}, step=step)
        self._update_progress(step, metrics)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({name: wandb.Table(columns=columns, data=rows)})

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
