"""``run.json``: what a run was, where it stands, and where to resume it from."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from loops_runner.storage.atomic import atomic_write_json, read_json

RUN_FILE = "run.json"
# Keys that may change between a run and its resume without changing the math.
# A larger time budget continues a run the budget stopped; retention keeps other files.
_HASH_EXCLUDED = ("dry_run", "resume", "timeouts", "session", "service", "wandb", "objective",
                  "report", "time_budget_s", "checkpoints")


class CheckpointRecord(BaseModel):
    step: int
    path: str
    cursor: dict[str, Any] = Field(default_factory=dict)
    saved_at: float = Field(default_factory=time.time)


class RunRecord(BaseModel):
    config_hash: str
    seed: int
    run_name: str
    recipe: str
    backend: str
    base_model: str
    status: str = "created"  # created | running | completed | failed | stopped
    # Why a stopped run stopped: the time budget, or an interrupt (Ctrl-C, SIGTERM).
    stop_reason: str | None = None
    package_versions: dict[str, str] = Field(default_factory=dict)
    git_sha: str | None = None
    session_id: str | None = None
    run_ids: list[str] = Field(default_factory=list)
    wandb_id: str | None = None
    checkpoints: list[CheckpointRecord] = Field(default_factory=list)
    # The checkpoint whose weights this run started from (init_from), as resolved.
    init_from: str | None = None
    # The digest of the data the recipe read (its rows' content): an edited data file
    # under an unchanged command is another run, never this one's resume.
    data_digest: str | None = None
    final_metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    # What the run held on the service, over all attempts: trainer time from
    # the first create to the stop (x replicas: what a hosted run bills) and
    # tokens trained on, prompted and sampled.
    trainer_seconds: float = 0.0
    replicas: int = 1
    tokens: dict[str, int] = Field(default_factory=dict)
    started_at: float = Field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def run_id(self) -> str | None:
        return self.run_ids[-1] if self.run_ids else None

    def latest_checkpoint(self) -> CheckpointRecord | None:
        return self.checkpoints[-1] if self.checkpoints else None

    def save(self, run_dir: Path) -> None:
        payload = self.model_dump(mode="json")
        payload["run_id"] = self.run_id
        atomic_write_json(run_dir / RUN_FILE, payload)

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord | None:
        payload = read_json(run_dir / RUN_FILE)
        return cls.model_validate(payload) if isinstance(payload, dict) else None


def config_hash(config: dict[str, Any]) -> str:
    relevant = {k: v for k, v in config.items() if k not in _HASH_EXCLUDED}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("loops-runner", "torch", "transformers", "peft", "hydra-core", "wandb"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha(directory: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
