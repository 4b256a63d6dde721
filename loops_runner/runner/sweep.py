"""Sweep bookkeeping: a ``sweep.jsonl`` line per finished job and a summary table.

Registered as a Hydra callback in conf/config.yaml; it only acts in multirun
mode. Where each hook runs depends on the launcher: ``on_job_end`` runs in the
process that ran the job (this one for Hydra's basic launcher, a worker for the
joblib and Ray launchers), while ``on_multirun_start`` and ``on_multirun_end``
run in the command's own process. So jobs that finish at the same moment
append their lines under a file lock, each line in one write, and the summary
reads the file back.

A failing job never stops the others: every launcher records it and goes on.
Hydra's sweepers then raise the first failure after the batch, which skips
``on_multirun_end``; ``print_pending_summary`` (called when the command ends)
prints the table in that case too.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from loops_runner.runner.end_hooks import write_reports
from loops_runner.runner.run_files import SWEEP_FILE

SUMMARY_PREFIXES = ("eval/", "train/loss", "rollout/")

# The sweep dir of this process's multirun while its summary is still owed.
_pending_summary_dir: Path | None = None


class SweepJobError(RuntimeError):
    """A job's error, as text: the original could not travel from a worker process."""


def portable_error(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a ``SweepJobError`` with its text.

    Parallel launchers send each job's result, its exception included, back from a
    worker process; one that cannot be unpickled would abort the whole sweep.
    """
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return SweepJobError(f"{type(error).__name__}: {error}")
    return error


def _is_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def current_sweep_dir() -> Path | None:
    """The sweep dir of the multirun this job belongs to; None outside a multirun."""
    if not HydraConfig.initialized() or not _is_multirun():
        return None
    hydra_cfg = HydraConfig.get()
    # runtime.cwd: a relative sweep dir means the command's directory even when
    # hydra.job.chdir=true moved this process into the job's dir.
    return Path(hydra_cfg.runtime.cwd) / str(hydra_cfg.sweep.dir)


def read_sweep_lines(sweep_file: Path) -> list[dict[str, Any]]:
    """Every complete line; a line torn by a kill mid-write is skipped, not fatal."""
    try:
        text = sweep_file.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "run_dir" in row:
            rows.append(row)
    return rows


def _logged_already(sweep_file: Path, line: dict[str, Any]) -> bool:
    """Whether the file has this job's completed line with the same final metrics."""
    def canonical(metrics: Any) -> str:
        return json.dumps(metrics, sort_keys=True, default=str)

    try:
        text = sweep_file.read_text()
    except FileNotFoundError:
        return False
    run_dir, metrics = json.dumps(line["run_dir"]), canonical(line["final_metrics"])
    for raw in text.splitlines():
        if run_dir not in raw:  # cheap: only this job's lines are parsed
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if row.get("run_dir") == line["run_dir"] and row.get("job") == line["job"] \
                and row.get("status") == "completed" \
                and canonical(row.get("final_metrics")) == metrics:
            return True
    return False


def append_sweep_line(sweep_file: Path, line: dict[str, Any]) -> bool:
    """Append one job's line; False when that completed result is logged already.

    A re-run of a killed sweep skips the jobs that had completed; their lines
    are in the file from the first attempt, so they are not written twice.
    """
    data = (json.dumps(line, default=str) + "\n").encode()
    sweep_file.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(sweep_file.with_name(f".{sweep_file.name}.lock"))):
        if line["status"] == "completed" and _logged_already(sweep_file, line):
            return False
        fd = os.open(sweep_file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn last line must not swallow this one
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def latest_per_job(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last line of each job (a resumed job's newest outcome), in job order."""
    latest = {(row.get("job", 0), row["run_dir"]): row for row in rows}
    return [latest[key] for key in sorted(latest)]


def print_summary(sweep_dir: Path, console: Console | None = None) -> None:
    sweep_file = sweep_dir / SWEEP_FILE
    rows = latest_per_job(read_sweep_lines(sweep_file))
    if not rows:
        return
    numeric = sorted({key for row in rows for key, value in (row["final_metrics"] or {}).items()
                      if isinstance(value, int | float)})
    # The headline metrics only, not their parts (eval/accuracy, not
    # eval/accuracy/<family>); every metric is in sweep.jsonl.
    present = set(numeric)
    headline = [m for m in numeric if m.rsplit("/", 1)[0] not in present]
    metric_names = [m for m in headline if m.startswith(SUMMARY_PREFIXES)][:4] or headline[:4]
    table = Table(title=f"sweep summary ({sweep_file})")
    for column in ("job", "overrides", "status", *metric_names):
        table.add_column(column, overflow="fold")
    for row in rows:
        values = row["final_metrics"] or {}
        overrides = [o for o in row["overrides"] if not o.startswith("+recipe=")]
        table.add_row(str(row["job"]), " ".join(overrides), row["status"],
                      *(f"{values[m]:.4g}" if isinstance(values.get(m), int | float) else "-"
                        for m in metric_names))
    (console or Console()).print(table)


def end_of_sweep(sweep_dir: Path, console: Console | None = None) -> None:
    """Stop what the jobs kept up for each other, then the summary and what the sweep used."""
    from loops_runner.runner.lifecycle import stop_sweep_sessions, sweep_use

    console = console or Console()
    stop_sweep_sessions(sweep_dir, console)
    print_summary(sweep_dir, console)
    rows = latest_per_job(read_sweep_lines(sweep_dir / SWEEP_FILE))
    if rows:
        replica_seconds, tokens = sweep_use([Path(row["run_dir"]) for row in rows])
        console.print(f"Sweep used: {replica_seconds:.1f} trainer replica-seconds; tokens "
                      f"trained {tokens['trained']}, prompt {tokens['prompt']}, sampled "
                      f"{tokens['sampled']}")


def print_pending_summary() -> None:
    """End a multirun that ended without ``on_multirun_end`` (a failed job, Ctrl-C)."""
    global _pending_summary_dir
    if _pending_summary_dir is not None:
        sweep_dir, _pending_summary_dir = _pending_summary_dir, None
        end_of_sweep(sweep_dir)


class SweepLogCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _pending_summary_dir
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        _pending_summary_dir = sweep_dir
        Console().print(f"Sweep dir: {sweep_dir}  (to resume it after a kill, re-run the same "
                        f"command with hydra.sweep.dir={sweep_dir})", soft_wrap=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun():
            return
        hydra_cfg = HydraConfig.get()
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
        sweep_dir = current_sweep_dir()
        assert sweep_dir is not None
        append_sweep_line(sweep_dir / SWEEP_FILE, line)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _pending_summary_dir
        _pending_summary_dir = None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        end_of_sweep(sweep_dir)
        if config.get("report", True) and (sweep_dir / SWEEP_FILE).is_file():
            write_reports(sweep_dir, Console())
