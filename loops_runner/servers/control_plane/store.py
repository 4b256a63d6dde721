"""The control plane's state: one SQLite file under the data home.

Sessions, runs, samplers, deployments (with every status change kept as an
event) and a mirror of the checkpoint manifests (the tables: ``tables``). Everything the API lists
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from loops_runner.servers.control_plane.deployment_states import (
    DEPLOYING,
    PAIRED,
    READY_STATUSES,
    SAMPLER,
    STANDALONE,
    sources,
)
from loops_runner.servers.control_plane.tables import (
    SCHEMA,
    CheckpointRow,
    DeploymentRow,
    EventRow,
    RunRow,
    SamplerRow,
    SessionRow,
    columns,
)

DB_FILE = "control_plane.sqlite"


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


Row = TypeVar("Row")


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
        self._db.executescript(SCHEMA)
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
        names = columns(type(row))
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
            names = columns(DeploymentRow)
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
        names = columns(CheckpointRow)
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


