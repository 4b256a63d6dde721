"""The control plane's state: one SQLite file under the data home.

Sessions, runs, samplers, deployments (with every status change kept as an
event) and a mirror of the checkpoint manifests. Everything the API lists
comes from here, so a restarted control plane answers as before.

One connection in autocommit mode guarded by a lock: each call is a
sub-millisecond statement, cheap enough to run on the event loop. WAL lets an
operator read the file while the server writes.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from loops_runner.servers.control_plane.deployment_states import (
    DEPLOYING,
    PAIRED,
    READY_STATUSES,
    SAMPLER,
    STANDALONE,
    ready_status,
    sources,
)

DB_FILE = "control_plane.sqlite"

_SCHEMA = """
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


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return iso(utcnow())


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_id(prefix: str) -> str:
    """Opaque ids of ``[a-z0-9-]`` (run ids end up in ``bt://`` paths and folder names)."""
    return f"{prefix}-{secrets.token_hex(8)}"


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


Row = TypeVar("Row")


def _columns(row_type: type) -> list[str]:
    return [field.name for field in fields(row_type)]


class Store:
    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.path = home / DB_FILE
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added after a table first shipped (CREATE TABLE IF NOT EXISTS keeps old ones)."""
        with self._lock:
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
            if "reuse_source" not in columns:
                self._db.execute("ALTER TABLE runs ADD COLUMN reuse_source TEXT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing --------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _select(self, row_type: type[Row], sql: str, params: Iterable[Any] = ()) -> list[Row]:
        with self._lock:
            rows = self._db.execute(sql, tuple(params)).fetchall()
        return [row_type(**dict(row)) for row in rows]

    def _one(self, row_type: type[Row], sql: str, params: Iterable[Any] = ()) -> Row | None:
        rows = self._select(row_type, sql, params)
        return rows[0] if rows else None

    def _insert(self, table: str, row: Any) -> None:
        names = _columns(type(row))
        values = [getattr(row, name) for name in names]
        sql = (f"INSERT INTO {table} ({', '.join(names)}) "
               f"VALUES ({', '.join('?' for _ in names)})")
        with self._lock:
            self._db.execute(sql, values)

    # -- sessions --------------------------------------------------------------

    def create_session(self, training_project_id: str | None, team_id: str | None) -> SessionRow:
        row = SessionRow(new_id("sess"), training_project_id, team_id, now_iso())
        self._insert("sessions", row)
        return row

    def get_session(self, session_id: str) -> SessionRow | None:
        return self._one(SessionRow, "SELECT * FROM sessions WHERE id = ?", (session_id,))

    def list_sessions(self) -> list[SessionRow]:
        return self._select(SessionRow, "SELECT * FROM sessions ORDER BY created_at")

    # -- deployments -----------------------------------------------------------

    def create_deployment(
        self,
        *,
        kind: str,
        role: str,
        base_model: str,
        launch_model: str,
        log_dir: Path,
        session_id: str | None,
        trainer_deployment_id: str | None = None,
    ) -> DeploymentRow:
        deployment_id = new_id("dep")
        now = now_iso()
        row = DeploymentRow(
            id=deployment_id, kind=kind, role=role, base_model=base_model,
            launch_model=launch_model,
            model_id=new_id("model") if kind == SAMPLER else None,
            trainer_deployment_id=trainer_deployment_id, session_id=session_id,
            status=DEPLOYING, reason="starting the server process", status_updated_at=now,
            url=None, port=None, pid=None,
            log_path=str(log_dir / f"{kind}-{deployment_id}.log"),
            restarts=0, ready_once=0, created_at=now,
        )
        with self._transaction() as db:
            names = _columns(DeploymentRow)
            db.execute(f"INSERT INTO deployments ({', '.join(names)}) "
                       f"VALUES ({', '.join('?' for _ in names)})",
                       [getattr(row, name) for name in names])
            db.execute("INSERT INTO deployment_events (deployment_id, status, reason, at) "
                       "VALUES (?, ?, ?, ?)", (deployment_id, DEPLOYING, row.reason, now))
        return row

    def get_deployment(self, deployment_id: str) -> DeploymentRow | None:
        return self._one(DeploymentRow, "SELECT * FROM deployments WHERE id = ?",
                         (deployment_id,))

    def list_deployments(self, *, statuses: Iterable[str] | None = None) -> list[DeploymentRow]:
        if statuses is None:
            return self._select(DeploymentRow, "SELECT * FROM deployments ORDER BY created_at")
        wanted = list(statuses)
        marks = ", ".join("?" for _ in wanted)
        return self._select(DeploymentRow,
                            f"SELECT * FROM deployments WHERE status IN ({marks}) "
                            "ORDER BY created_at", wanted)

    def paired_samplers_of(self, trainer_deployment_id: str) -> list[DeploymentRow]:
        """Paired sampler deployments of a trainer deployment, newest first."""
        return self._select(DeploymentRow,
                            "SELECT * FROM deployments WHERE role = ? AND "
                            "trainer_deployment_id = ? ORDER BY created_at DESC",
                            (PAIRED, trainer_deployment_id))

    def standalone_samplers_of_session(self, session_id: str) -> list[DeploymentRow]:
        return self._select(DeploymentRow,
                            "SELECT * FROM deployments WHERE role = ? AND session_id = ? "
                            "ORDER BY created_at DESC", (STANDALONE, session_id))

    def set_status(
        self,
        deployment_id: str,
        status: str,
        reason: str | None,
        *,
        only_from: Iterable[str] | None = None,
    ) -> bool:
        """Record a status change (and its event); ``only_from`` narrows where from.

        Only moves the state machine allows are recorded (``deployment_states``).
        Returns whether the change happened, so racing watchers cannot flip a
        status twice.
        """
        allowed = sources(status)
        if only_from is not None:
            allowed &= set(only_from)
        now = now_iso()
        with self._transaction() as db:
            current = db.execute("SELECT status, reason FROM deployments WHERE id = ?",
                                 (deployment_id,)).fetchone()
            if current is None:
                return False
            if current["status"] not in allowed:
                return False
            if current["status"] == status and current["reason"] == reason:
                return False
            ready = 1 if status in READY_STATUSES else None
            db.execute("UPDATE deployments SET status = ?, reason = ?, status_updated_at = ?, "
                       "ready_once = COALESCE(?, ready_once) WHERE id = ?",
                       (status, reason, now, ready, deployment_id))
            db.execute("INSERT INTO deployment_events (deployment_id, status, reason, at) "
                       "VALUES (?, ?, ?, ?)", (deployment_id, status, reason, now))
        return True

    def set_process(self, deployment_id: str, *, pid: int | None, url: str | None = None,
                    port: int | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE deployments SET pid = ?, url = COALESCE(?, url), "
                             "port = COALESCE(?, port) WHERE id = ?",
                             (pid, url, port, deployment_id))

    def count_restart(self, deployment_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE deployments SET restarts = restarts + 1 WHERE id = ?",
                             (deployment_id,))

    def events(self, deployment_id: str) -> list[EventRow]:
        return self._select(EventRow, "SELECT * FROM deployment_events WHERE deployment_id = ? "
                            "ORDER BY seq", (deployment_id,))

    # -- runs ------------------------------------------------------------------

    def create_run(self, row: RunRow) -> RunRow:
        self._insert("runs", row)
        return row

    def get_run(self, run_id: str) -> RunRow | None:
        return self._one(RunRow, "SELECT * FROM runs WHERE id = ?", (run_id,))

    def list_runs(
        self,
        *,
        session_id: str | None = None,
        deployment_id: str | None = None,
        base_model: str | None = None,
        reuse_source: str | None = None,
        newest_first: bool = False,
    ) -> list[RunRow]:
        clauses, params = [], []
        for column, value in (("session_id", session_id), ("deployment_id", deployment_id),
                              ("base_model", base_model), ("reuse_source", reuse_source)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        order = "DESC" if newest_first else "ASC"
        return self._select(RunRow, f"SELECT * FROM runs {where} ORDER BY created_at {order}",
                            params)

    def set_run_status(self, run_id: str, status: str, reason: str | None) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET status = ?, reason = ? WHERE id = ?",
                             (status, reason, run_id))

    def set_runs_status_of(self, deployment_id: str, status: str, reason: str | None, *,
                           only_from: Iterable[str]) -> list[str]:
        """Move the runs of a trainer deployment that are in ``only_from`` to ``status``."""
        wanted = list(only_from)
        marks = ", ".join("?" for _ in wanted)
        with self._transaction() as db:
            ids = [row["id"] for row in db.execute(
                f"SELECT id FROM runs WHERE deployment_id = ? AND status IN ({marks})",
                (deployment_id, *wanted)).fetchall()]
            db.executemany("UPDATE runs SET status = ?, reason = ? WHERE id = ?",
                           [(status, reason, run_id) for run_id in ids])
        return ids

    # -- samplers --------------------------------------------------------------

    def create_sampler(self, row: SamplerRow) -> SamplerRow:
        self._insert("samplers", row)
        return row

    def get_sampler(self, sampler_id: str) -> SamplerRow | None:
        return self._one(SamplerRow, "SELECT * FROM samplers WHERE id = ?", (sampler_id,))

    def sampler_for_run(self, run_id: str) -> SamplerRow | None:
        return self._one(SamplerRow, "SELECT * FROM samplers WHERE run_id = ?", (run_id,))

    def list_samplers(self, *, deployment_id: str | None = None,
                      session_id: str | None = None) -> list[SamplerRow]:
        clauses, params = [], []
        for column, value in (("deployment_id", deployment_id), ("session_id", session_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select(SamplerRow, f"SELECT * FROM samplers {where} ORDER BY created_at",
                            params)

    def move_sampler(self, sampler_id: str, deployment_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE samplers SET deployment_id = ? WHERE id = ?",
                             (deployment_id, sampler_id))

    # -- checkpoints (a mirror of the manifests on disk) ------------------------

    def upsert_checkpoint(self, row: CheckpointRow) -> None:
        names = _columns(CheckpointRow)
        updates = ", ".join(f"{name} = excluded.{name}" for name in names if name != "id")
        sql = (f"INSERT INTO checkpoints ({', '.join(names)}) "
               f"VALUES ({', '.join('?' for _ in names)}) "
               f"ON CONFLICT(id) DO UPDATE SET {updates}")
        with self._lock:
            self._db.execute(sql, [getattr(row, name) for name in names])

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        return self._one(CheckpointRow, "SELECT * FROM checkpoints WHERE id = ?",
                         (checkpoint_id,))

    def list_checkpoints(self, *, run_id: str | None = None,
                         base_model: str | None = None) -> list[CheckpointRow]:
        clauses, params = [], []
        for column, value in (("run_id", run_id), ("base_model", base_model)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select(CheckpointRow,
                            f"SELECT * FROM checkpoints {where} ORDER BY created_at, id", params)


