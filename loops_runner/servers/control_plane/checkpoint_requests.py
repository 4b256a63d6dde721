"""Checkpoint requests: listing, validation, signed file URLs.

The registry (``checkpoint_registry``) mirrors the manifests on disk; file
URLs are signed and expire (``files``), so a listing can hand out downloads
without the API key.
"""

from __future__ import annotations

from dataclasses import dataclass

from loops_runner.servers.control_plane.checkpoint_registry import CheckpointRegistry, list_files
from loops_runner.servers.control_plane.checks import Checks, bt_checkpoint, invalid, not_found
from loops_runner.servers.control_plane.files import FileRef, FileSigner
from loops_runner.servers.control_plane.store import Store
from loops_runner.servers.control_plane.tables import CheckpointRow
from loops_runner.wire.checkpoints import (
    Checkpoint,
    CheckpointFile,
    CheckpointFilesResponse,
    ValidateCheckpointRequest,
)

MAX_FILE_PAGE_SIZE = 1000


@dataclass
class CheckpointRequests:
    store: Store
    registry: CheckpointRegistry
    signer: FileSigner
    checks: Checks

    def list_checkpoints(self, run_id: str | None, checkpoint_path: str | None,
                         base_model: str | None) -> list[Checkpoint]:
        given = [name for name, value in (("run_id", run_id),
                                          ("checkpoint_path", checkpoint_path),
                                          ("base_model", base_model)) if value is not None]
        if len(given) != 1:
            raise invalid("pass exactly one of the query filters run_id, checkpoint_path, "
                          f"base_model (got {', '.join(given) or 'none'})")
        if run_id is not None:
            rows = self.registry.by_run(run_id)
        elif checkpoint_path is not None:
            parsed = bt_checkpoint(checkpoint_path, "checkpoint_path")
            row = self.registry.by_path(parsed.run_id, parsed.kind, parsed.name)
            rows = [row] if row is not None else []
        else:
            assert base_model is not None
            try:
                rows = self.registry.by_base_model(base_model)
            except ValueError as exc:
                raise invalid(f"base_model: {exc}", "INVALID_BASE_MODEL") from None
        return [self.registry.to_wire(row) for row in rows]

    def validate_checkpoint(self, body: ValidateCheckpointRequest) -> None:
        row = self.checks.checkpoint_for_path(body.checkpoint_path, "checkpoint_path")
        if not body.checkpoint_path.startswith("bt://"):
            raise invalid("checkpoint_path must be a bt://loops:<run_id>/sampler_weights/<name> "
                          "path", "INVALID_CHECKPOINT_PATH")
        if body.run_id and row is not None:
            run = self.store.get_run(body.run_id)
            if run is not None and row.base_model and not self.checks.same_model(run.base_model,
                                                                           row.base_model):
                raise invalid(f"checkpoint {body.checkpoint_path!r} was trained on "
                              f"{row.base_model!r}, but run {run.id} uses {run.base_model!r}",
                              "BASE_MODEL_MISMATCH")

    def _checkpoint(self, checkpoint_id: str) -> CheckpointRow:
        row = self.registry.get(checkpoint_id)
        if row is None:
            raise not_found(f"checkpoint {checkpoint_id!r} does not exist (or has expired)")
        return row

    def checkpoint_files(self, checkpoint_id: str, page_size: int, page_token: int,
                         base_url: str) -> CheckpointFilesResponse:
        if not 1 <= page_size <= MAX_FILE_PAGE_SIZE:
            raise invalid(f"page_size = {page_size} must be between 1 and {MAX_FILE_PAGE_SIZE}")
        if page_token < 0:
            raise invalid(f"page_token = {page_token} must be >= 0")
        row = self._checkpoint(checkpoint_id)
        files = list_files(self.registry.folder(row))
        page = files[page_token:page_token + page_size]
        entries = []
        for info in page:
            token, _ = self.signer.sign(FileRef(row.run_id, row.kind, row.name,
                                                info.relative_name))
            entries.append(CheckpointFile(
                url=f"{base_url}/files/{token}", relative_file_name=info.relative_name,
                node_rank=0, size_bytes=info.size_bytes, last_modified=info.last_modified))
        following = page_token + len(page)
        return CheckpointFilesResponse(
            presigned_urls=entries,
            next_page_token=following if following < len(files) and page else None,
            total_count=len(files))

    def checkpoint_source(self, checkpoint_id: str) -> dict[str, object]:
        self._checkpoint(checkpoint_id)
        return {"source": {"kind": "s3"}}
