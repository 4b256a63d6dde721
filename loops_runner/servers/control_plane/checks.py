"""Refusals of the control plane, and the checks every request handler shares.

Every refusal is a ``servers.common.Refusal`` (422 for bad input, 404 for unknown ids on
read routes, 501 for what the local control plane cannot honour, 503 when a
server could not be started) so clients never retry a permanent error. The
checks read the store and the checkpoint registry and change nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from loops_runner.models.registry import (
    ResolvedModel,
    canonical_model_id,
    max_context_length,
    resolve_model,
)
from loops_runner.servers.common import Refusal
from loops_runner.servers.control_plane.checkpoint_registry import CheckpointRegistry
from loops_runner.servers.control_plane.store import Store
from loops_runner.servers.control_plane.tables import CheckpointRow, DeploymentRow, SessionRow
from loops_runner.storage.layout import resolve_checkpoint_path
from loops_runner.wire.control_plane import Team
from loops_runner.wire.paths import BtPath, parse_checkpoint_path

LOCAL_TEAM = Team(id="team-local", name="local")
LOCAL_SCOPES = frozenset({None, "default", "deployment"})


def invalid(detail: str, reason: str = "INVALID_REQUEST") -> Refusal:
    return Refusal(422, detail, reason)


def not_found(detail: str) -> Refusal:
    return Refusal(404, detail, "NOT_FOUND")


def deployment_failure(row: DeploymentRow) -> Refusal:
    return Refusal(503, f"{row.kind} deployment {row.id} is {row.status}: {row.reason}",
                    "DEPLOYMENT_FAILED")


def bt_checkpoint(path: str, field: str) -> BtPath:
    """``path`` as a ``bt://`` path naming a checkpoint (syntax only), else refused."""
    try:
        return parse_checkpoint_path(path)
    except ValueError as exc:
        raise invalid(f"{field}: {exc}", "INVALID_CHECKPOINT_PATH") from None


@dataclass
class Checks:
    store: Store
    registry: CheckpointRegistry
    home: Path

    @staticmethod
    def team(team_id: str | None) -> None:
        if team_id is not None and team_id != LOCAL_TEAM.id:
            raise invalid(f"team_id {team_id!r} is unknown: this control plane has one team, "
                          f"{LOCAL_TEAM.id!r} (GET /v1/teams)", "UNKNOWN_TEAM")

    @staticmethod
    def scope(scope: str | None) -> None:
        # Every local trainer and sampler is a deployment of its own on this
        # machine; a pool it cannot reach is refused rather than ignored.
        if scope not in LOCAL_SCOPES:
            raise Refusal(501, f"scope {scope!r} cannot be honoured by the local control "
                                "plane: it runs every trainer and sampler as its own "
                                "deployment on this machine (use 'default' or 'deployment')",
                           "NOT_SUPPORTED")

    def session(self, session_id: str | None, field: str = "session_id") -> SessionRow:
        if not session_id:
            raise invalid(f"{field} is required (create one with POST /v1/loops/sessions)")
        row = self.store.get_session(session_id)
        if row is None:
            raise invalid(f"{field} {session_id!r} names no session of this control plane",
                          "UNKNOWN_SESSION")
        return row

    async def resolved_model(self, name: str, field: str) -> ResolvedModel:
        try:
            # Builds the built-in model on first use, which takes a moment.
            return await asyncio.to_thread(resolve_model, name, self.home)
        except (ValueError, OSError) as exc:
            raise invalid(f"{field}: {exc}", "INVALID_BASE_MODEL") from None

    @staticmethod
    def context_length(resolved: ResolvedModel, value: int | None, field: str) -> None:
        limit = max_context_length(resolved)
        if value is not None and limit is not None and value > limit:
            raise invalid(f"{field} = {value} exceeds the maximum context length {limit} of "
                          f"{resolved.requested!r}", "MAX_SEQ_LEN_TOO_LARGE")

    def checkpoint_for_path(self, path: str, field: str) -> CheckpointRow | None:
        """Check a checkpoint path names an existing checkpoint; its registry row if any."""
        if path.startswith("bt://"):
            parsed = bt_checkpoint(path, field)
            row = self.registry.by_path(parsed.run_id, parsed.kind, parsed.name)
            if row is None:
                raise invalid(f"{field} {path!r}: no such checkpoint", "CHECKPOINT_NOT_FOUND")
            return row
        try:
            resolve_checkpoint_path(self.home, path)
        except (ValueError, FileNotFoundError) as exc:
            raise invalid(f"{field}: {exc}", "CHECKPOINT_NOT_FOUND") from None
        return None

    def same_model(self, a: str, b: str) -> bool:
        try:
            return canonical_model_id(a, self.home) == canonical_model_id(b, self.home)
        except ValueError:
            return a == b

    def deployment(self, deployment_id: str) -> DeploymentRow:
        row = self.store.get_deployment(deployment_id)
        if row is None:
            raise not_found(f"deployment {deployment_id!r} does not exist")
        return row
