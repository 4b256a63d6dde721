"""Sweep bookkeeping: a ``sweep.jsonl`` line per finished job and a summary table.

Registered as a Hydra callback in conf/config.yaml; it only acts in multirun
mode. Hydra's basic launcher runs the jobs one after another in this process,
records a failing job and goes on with the next, so one failure never stops
the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from loops_runner.runner.run_files import SWEEP_FILE

SUMMARY_PREFIXES = ("eval/", "train/loss", "rollout/")


def _is_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


class SweepLogCallback(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun():
            return
        hydra_cfg = HydraConfig.get()
        sweep_dir = Path(hydra_cfg.sweep.dir)
        ok = job_return.status == JobStatus.COMPLETED
        value = job_return._return_value if ok else None
        if ok and not isinstance(value, dict):  # objective= returned one number
            value = {str(config.get("objective") or "objective"): value}
        line = {
            "job": hydra_cfg.job.num,
            "overrides": list(job_return.overrides or []),
            "status": "completed" if ok else "failed",
            "run_dir": hydra_cfg.runtime.output_dir,
            "final_metrics": value,
            "error": None if ok else repr(job_return._return_value),
            "finished_at": time.time(),
        }
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with (sweep_dir / SWEEP_FILE).open("a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_file = Path(config.hydra.sweep.dir) / SWEEP_FILE
        if not sweep_file.is_file():
            return
        self._print_summary(sweep_file)
        if config.get("report", True):
            from loops_runner.report import write_report_quietly  # plotting loads only here

            write_report_quietly(sweep_file.parent, Console())

    @staticmethod
    def _print_summary(sweep_file: Path) -> None:
        rows = [json.loads(line) for line in sweep_file.read_text().splitlines() if line.strip()]
        numeric = sorted({key for row in rows for key, value in (row["final_metrics"] or {}).items()
                          if isinstance(value, int | float)})
        # The headline metrics only; every metric is in sweep.jsonl.
        metric_names = [m for m in numeric if m.startswith(SUMMARY_PREFIXES)][:4] or numeric[:4]
        table = Table(title=f"sweep summary ({sweep_file})")
        for column in ("job", "overrides", "status", *metric_names):
            table.add_column(column, overflow="fold")
        for row in rows:
            values = row["final_metrics"] or {}
            overrides = [o for o in row["overrides"] if not o.startswith("+recipe=")]
            table.add_row(str(row["job"]), " ".join(overrides), row["status"],
                          *(f"{values[m]:.4g}" if isinstance(values.get(m), int | float) else "-"
                            for m in metric_names))
        Console().print(table)
