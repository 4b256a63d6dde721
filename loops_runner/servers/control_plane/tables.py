"""The control plane's tables: the SQL schema, and one row dataclass per table.

A row dataclass lists its table's columns in order; the store reads rows into
them and inserts them column by column (``columns``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from loops_runner.servers.control_plane.deployment_states import ready_status

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    training_project_id TEXT,
    team_id TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deployments (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    base_model TEXT NOT NULL,
    launch_model TEXT NOT NULL,
    model_id TEXT,
    trainer_deployment_id TEXT,
    session_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    status_updated_at TEXT NOT NULL,
    url TEXT,
    port INTEGER,
    pid INTEGER,
    log_path TEXT NOT NULL,
    restarts INTEGER NOT NULL DEFAULT 0,
    ready_once INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_by_trainer ON deployments (trainer_deployment_id);
CREATE TABLE IF NOT EXISTS deployment_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_deployment ON deployment_events (deployment_id, seq);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    base_model TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    lora_rank INTEGER NOT NULL,
    replicas INTEGER NOT NULL,
    availability_model TEXT NOT NULL,
    seed INTEGER,
    max_seq_len INTEGER,
    name TEXT,
    path TEXT,
    deployment_id TEXT NOT NULL,
    reused INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    reason TEXT,
    created_at TEXT NOT NULL,
    reuse_source TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_session ON runs (session_id, created_at);
CREATE INDEX IF NOT EXISTS runs_by_deployment ON runs (deployment_id);
CREATE TABLE IF NOT EXISTS samplers (
    id TEXT PRIMARY KEY,
    session_id TEXT,
    run_id TEXT UNIQUE,
    base_model TEXT NOT NULL,
    model_path TEXT,
    deployment_id TEXT NOT NULL,
    max_seq_length INTEGER,
    num_replicas INTEGER,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    checkpoint_type TEXT NOT NULL,
    base_model TEXT NOT NULL,
    lora_rank INTEGER NOT NULL,
    lora_alpha REAL,
    step INTEGER,
    created_at TEXT NOT NULL,
    ttl_seconds INTEGER,
    expires_at TEXT,
    size_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS checkpoints_by_run ON checkpoints (run_id);
"""


@dataclass
class SessionRow:
    id: str
    training_project_id: str | None
    team_id: str | None
    created_at: str


@dataclass
class DeploymentRow:
    id: str
    kind: str
    role: str
    base_model: str
    launch_model: str
    model_id: str | None
    trainer_deployment_id: str | None
    session_id: str | None
    status: str
    reason: str | None
    status_updated_at: str
    url: str | None
    port: int | None
    pid: int | None
    log_path: str
    restarts: int
    ready_once: int
    created_at: str

    @property
    def ready_status(self) -> str:
        return ready_status(self.kind)


@dataclass
class RunRow:
    id: str
    session_id: str
    base_model: str
    requested_model: str
    lora_rank: int
    replicas: int
    availability_model: str
    seed: int | None
    max_seq_len: int | None
    name: str | None
    path: str | None
    deployment_id: str
    reused: int
    status: str
    reason: str | None
    created_at: str
    # "session:<id>" / "run:<id>" when created with reuse: later runs asking to
    # reuse the same source find this run's trainer too (sweep jobs started
    # together share one trainer).
    reuse_source: str | None = None


@dataclass
class SamplerRow:
    id: str
    session_id: str | None
    run_id: str | None
    base_model: str
    model_path: str | None
    deployment_id: str
    max_seq_length: int | None
    num_replicas: int | None
    created_at: str


@dataclass
class CheckpointRow:
    id: str
    run_id: str
    name: str
    kind: str
    target: str
    checkpoint_type: str
    base_model: str
    lora_rank: int
    lora_alpha: float | None
    step: int | None
    created_at: str
    ttl_seconds: int | None
    expires_at: str | None
    size_bytes: int


@dataclass
class EventRow:
    seq: int
    deployment_id: str
    status: str
    reason: str | None
    at: str


def columns(row_type: type) -> list[str]:
    return [field.name for field in fields(row_type)]
