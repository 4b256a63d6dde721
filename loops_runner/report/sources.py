"""What a report reads: run dirs and sweep dirs, tolerant of partial files.

A run dir holds ``run.json`` and/or ``metrics.jsonl`` (plus, when the recipe
wrote them, ``config.resolved.yaml``, ``samples.jsonl``, ``rollouts.jsonl`` and
``divergence.jsonl``).
A sweep dir holds ``sweep.jsonl`` and one run dir per job. A run that is still
going, or was killed, may have a torn last line or no ``run.json`` yet: such
lines are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from loops_runner.runner.metrics import METRICS_FILE
from loops_runner.runner.run_files import RESOLVED_CONFIG_FILE, SWEEP_FILE
from loops_runner.runner.run_record import RUN_FILE

# Written by recipes: sft's final samples, the RL recipes' rollout groups and the
# tokens whose sampler and trainer logprobs differ most (per step).
SAMPLES_FILE = "samples.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
DIVERGENCE_FILE = "divergence.jsonl"
HYDRA_OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
# Keys of metrics.jsonl that are coordinates, not metrics.
STEP_KEY = "step"
WALL_KEY = "time/wall"


ModelT = TypeVar("ModelT", bound=BaseModel)


class ReportError(ValueError):
    """A report cannot be made from what was given; phrased for the user."""


class RolloutGroup(BaseModel):
    """One line of ``rollouts.jsonl``: a prompt's group of completions at one step."""

    model_config = ConfigDict(extra="allow")

    step: int
    policy_version: int | None = None
    group: int = 0
    prompt: str = ""
    completions: list[str]
    rewards: list[float | None] = []
    advantages: list[float | None] = []


class DivergentStep(BaseModel):
    """One line of ``divergence.jsonl``: a step's most divergent sampled tokens."""

    model_config = ConfigDict(extra="allow")

    step: int
    tokens: list[dict[str, Any]]


@dataclass
class Series:
    """One metric of one run: values with the step and elapsed wall time they were logged at."""

    steps: list[int]
    elapsed_s: list[float | None]
    values: list[float]


@dataclass
class RunData:
    run_dir: Path
    record: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[RolloutGroup] = field(default_factory=list)
    divergence: list[DivergentStep] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        shown = [o for o in self.overrides if not o.startswith("+recipe=")]
        return " ".join(shown) or self.run_dir.name

    @property
    def status(self) -> str:
        if self.record is None:
            return "unknown (no run.json)"
        return str(self.record.get("status", "unknown"))

    def metric_keys(self) -> list[str]:
        keys = {key for row in self.metrics for key, value in row.items()
                if key not in (STEP_KEY, WALL_KEY) and is_number(value)}
        return sorted(keys)

    def series(self, key: str) -> Series:
        walls = [row[WALL_KEY] for row in self.metrics if is_number(row.get(WALL_KEY))]
        start = min(walls) if walls else None
        steps: list[int] = []
        elapsed: list[float | None] = []
        values: list[float] = []
        for row in self.metrics:
            value = row.get(key)
            if not is_number(value) or not is_number(row.get(STEP_KEY)):
                continue
            steps.append(int(row[STEP_KEY]))
            wall = row.get(WALL_KEY)
            elapsed.append(round(wall - start, 3) if start is not None and is_number(wall)
                           else None)
            values.append(float(value))
        return Series(steps, elapsed, values)

    def final_metrics(self) -> tuple[dict[str, Any], bool]:
        """The run's final metrics, and whether they are only the last logged values."""
        recorded = (self.record or {}).get("final_metrics")
        if isinstance(recorded, dict) and recorded:
            return recorded, False
        last: dict[str, Any] = {}
        for row in self.metrics:
            last.update({k: v for k, v in row.items()
                         if k not in (STEP_KEY, WALL_KEY) and not k.startswith("time/")
                         and is_number(v)})
        if self.metrics and is_number(self.metrics[-1].get(STEP_KEY)):
            last["steps"] = self.metrics[-1][STEP_KEY]
        return last, True


@dataclass
class SweepJob:
    run: RunData
    number: int | None
    status: str
    final_metrics: dict[str, Any]
    partial: bool  # final metrics are the last logged values of an unfinished job

    def parameters(self) -> dict[str, str]:
        """The job's ``key=value`` overrides (the swept parameters among them)."""
        pairs = {}
        for override in self.run.overrides:
            key, sep, value = override.partition("=")
            if sep and key != "+recipe":
                pairs[key.lstrip("+~")] = value
        return pairs


@dataclass
class SweepData:
    sweep_dir: Path | None  # None: several run dirs compared
    jobs: list[SweepJob]
    objective: str | None
    notes: list[str] = field(default_factory=list)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file and how many lines could not be read."""
    if not path.is_file():
        return [], 0
    rows: list[dict[str, Any]] = []
    bad = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # a torn last line of a killed run, typically
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def _read_document(path: Path, loader: Any) -> Any:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        return loader(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _read_mapping(path: Path, loader: Any) -> dict[str, Any] | None:
    payload = _read_document(path, loader)
    return payload if isinstance(payload, dict) else None


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file() or (path / METRICS_FILE).is_file()


def child_run_dirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))


def _read_models(path: Path, model: type[ModelT]) -> tuple[list[ModelT], int]:
    """The lines of a JSONL file that ``model`` accepts, and how many it did not."""
    rows, bad = read_jsonl(path)
    items = []
    for row in rows:
        try:
            items.append(model.model_validate(row))
        except ValidationError:
            bad += 1
    return items, bad


def load_run(run_dir: Path) -> RunData:
    if not is_run_dir(run_dir):
        raise ReportError(no_run_message(run_dir))
    run = RunData(run_dir=run_dir)
    run.record = _read_mapping(run_dir / RUN_FILE, json.loads)
    if run.record is None:
        run.notes.append(f"{RUN_FILE} is missing or unreadable: ids, config hash and "
                         "checkpoints are unknown (a run that was killed before it started?)")
    run.config = _read_mapping(run_dir / RESOLVED_CONFIG_FILE, yaml.safe_load)
    run.metrics, bad = read_jsonl(run_dir / METRICS_FILE)
    if bad:
        run.notes.append(f"{bad} unreadable line(s) of {METRICS_FILE} skipped "
                         "(a run killed mid-write leaves a torn last line)")
    if not run.metrics:
        run.notes.append(f"no metrics yet: {METRICS_FILE} is missing or empty")
    run.samples, bad = read_jsonl(run_dir / SAMPLES_FILE)
    if bad:
        run.notes.append(f"{bad} unreadable line(s) of {SAMPLES_FILE} skipped")
    run.rollouts, bad = _read_models(run_dir / ROLLOUTS_FILE, RolloutGroup)
    if bad:
        run.notes.append(f"{bad} unreadable line(s) of {ROLLOUTS_FILE} skipped")
    run.divergence, bad = _read_models(run_dir / DIVERGENCE_FILE, DivergentStep)
    if bad:
        run.notes.append(f"{bad} unreadable line(s) of {DIVERGENCE_FILE} skipped")
    overrides = _read_document(run_dir / HYDRA_OVERRIDES_FILE, yaml.safe_load)
    run.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    status = run.status
    if status not in ("completed", "unknown"):
        run.notes.append(f"the run's status is '{status}': this report shows what it has so far")
    return run


def no_run_message(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist"
    return (f"no run in {path}: a run dir holds {RUN_FILE} or {METRICS_FILE}, a sweep dir "
            f"holds {SWEEP_FILE} or run dirs. Pass a run dir (e.g. outputs/sft/default) or a "
            "sweep dir (e.g. multirun/<date>).")


def _sweep_job_dir(sweep_dir: Path, recorded: str) -> Path:
    """Where a job's run dir is now: as recorded, else beside sweep.jsonl (a moved sweep)."""
    path = Path(recorded)
    if not path.is_absolute():
        path = sweep_dir / path
    return path if path.is_dir() else sweep_dir / path.name


def load_sweep(sweep_dir: Path) -> SweepData:
    rows, bad = read_jsonl(sweep_dir / SWEEP_FILE)
    notes = [f"{bad} unreadable line(s) of {SWEEP_FILE} skipped"] if bad else []
    jobs: list[SweepJob] = []
    seen: set[Path] = set()
    for row in rows:
        run_dir = _sweep_job_dir(sweep_dir, str(row.get("run_dir", "")))
        if not is_run_dir(run_dir) or run_dir.resolve() in seen:
            continue
        seen.add(run_dir.resolve())
        run = load_run(run_dir)
        if not run.overrides and isinstance(row.get("overrides"), list):
            run.overrides = [str(o) for o in row["overrides"]]
        final = row.get("final_metrics")
        partial = False
        if not isinstance(final, dict) or not final:
            final, partial = run.final_metrics()
        jobs.append(SweepJob(run, row.get("job"), str(row.get("status", run.status)),
                             final, partial))
    # Jobs still running (or killed) are not in sweep.jsonl yet.
    for run_dir in child_run_dirs(sweep_dir):
        if run_dir.resolve() not in seen:
            jobs.append(_job_from_run(load_run(run_dir), None))
    if not jobs:
        raise ReportError(no_run_message(sweep_dir))
    return SweepData(sweep_dir, jobs, _objective(jobs), notes)


def _job_from_run(run: RunData, number: int | None) -> SweepJob:
    final, partial = run.final_metrics()
    return SweepJob(run, number, run.status, final, partial)


def load_runs(run_dirs: list[Path]) -> SweepData:
    jobs = [_job_from_run(load_run(run_dir), index) for index, run_dir in enumerate(run_dirs)]
    return SweepData(None, jobs, _objective(jobs))


# Which final metric a sweep plots against its parameters when objective= was not set.
_OBJECTIVE_PREFERENCE = ("eval/nll", "eval/loss", "eval/accuracy", "eval/dpo/accuracy",
                         "rollout/reward_mean", "dpo/loss", "distill/reverse_kl", "train/loss")


def _objective(jobs: list[SweepJob]) -> str | None:
    for job in jobs:
        chosen = (job.run.config or {}).get("objective")
        if chosen:
            return str(chosen)
    numeric = {key for job in jobs for key, value in job.final_metrics.items() if is_number(value)}
    for key in _OBJECTIVE_PREFERENCE:
        if key in numeric:
            return key
    return sorted(numeric)[0] if numeric else None
