"""The checkpoint registry: manifests on disk, mirrored into the store.

The trainer writes ``checkpoint.json`` inside each checkpoint folder before the
folder appears (atomic rename), so the manifests are the source of truth: a
save is listed as soon as its operation is done, without any call from the
trainer to the control plane. Each listing rescans the manifests it needs and
brings the SQLite mirror up to date (new and overwritten saves, folders that
disappeared). Checkpoints past their ``ttl_seconds`` are deleted, files and
entry, by ``expire()`` (run periodically and before every listing).

A folder without a manifest (written by some other tool) is still listed when
it holds a PEFT ``adapter_config.json``; its fields then come from that file.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loops_runner.models.registry import canonical_model_id
from loops_runner.servers.control_plane.store import Store, iso, parse_iso, utcnow
from loops_runner.servers.control_plane.tables import CheckpointRow
from loops_runner.storage.layout import checkpoint_dir, run_dir, runs_root
from loops_runner.storage.manifests import MANIFEST_FILE, TARGET_BY_KIND, checkpoint_api_id
from loops_runner.wire.checkpoints import Checkpoint, LoraAdapterConfig
from loops_runner.wire.names import check_storage_name
from loops_runner.wire.paths import CHECKPOINT_KINDS, bt_path

logger = logging.getLogger(__name__)

CHECKPOINT_TYPE_BY_KIND = {"weights": "training", "sampler_weights": "sampler"}


@dataclass(frozen=True)
class CheckpointFileInfo:
    relative_name: str
    size_bytes: int
    last_modified: datetime


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _folder_size(folder: Path) -> int:
    return sum(info.size_bytes for info in list_files(folder))


def list_files(folder: Path) -> list[CheckpointFileInfo]:
    """Regular files under ``folder`` sorted by relative name; hidden entries and
    symlinks are skipped (nothing served can point outside the folder)."""
    found: list[CheckpointFileInfo] = []

    def walk(directory: Path, prefix: str) -> None:
        try:
            entries = sorted(directory.iterdir(), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            relative = f"{prefix}{entry.name}"
            if entry.is_dir():
                walk(entry, relative + "/")
            elif entry.is_file():
                stat = entry.stat()
                found.append(CheckpointFileInfo(
                    relative, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))

    walk(folder, "")
    return sorted(found, key=lambda info: info.relative_name)


def _row_from_folder(home: Path, run_id: str, kind: str, folder: Path) -> CheckpointRow | None:
    """A registry row from a checkpoint folder (its manifest, else its adapter config)."""
    name = folder.name
    try:
        check_storage_name(run_id)
        check_storage_name(name)
    except ValueError:
        return None
    manifest = _read_json(folder / MANIFEST_FILE)
    adapter = _read_json(folder / "adapter_config.json") or {}
    if manifest is None and not adapter:
        return None
    manifest = manifest or {}
    try:
        mtime = datetime.fromtimestamp(folder.stat().st_mtime, UTC)
    except OSError:
        return None
    created = parse_iso(manifest.get("created_at")) or mtime
    ttl = manifest.get("ttl_seconds")
    expires = parse_iso(manifest.get("expires_at"))
    if expires is None and isinstance(ttl, int | float) and ttl > 0:
        expires = created + timedelta(seconds=float(ttl))
    base_model = manifest.get("base_model") or adapter.get("base_model_name_or_path") or ""
    rank = manifest.get("lora_rank") or adapter.get("r") or 1
    alpha = manifest.get("lora_alpha", adapter.get("lora_alpha"))
    size = manifest.get("size_bytes")
    return CheckpointRow(
        id=checkpoint_api_id(run_id, kind, name),  # type: ignore[arg-type]
        run_id=run_id, name=name, kind=kind, target=TARGET_BY_KIND[kind],
        checkpoint_type=manifest.get("checkpoint_type") or CHECKPOINT_TYPE_BY_KIND[kind],
        base_model=str(base_model), lora_rank=int(rank),
        lora_alpha=float(alpha) if isinstance(alpha, int | float) else None,
        step=int(manifest["step"]) if isinstance(manifest.get("step"), int) else None,
        created_at=iso(created), ttl_seconds=int(ttl) if isinstance(ttl, int | float) else None,
        expires_at=iso(expires) if expires else None,
        size_bytes=int(size) if isinstance(size, int) else _folder_size(folder),
    )


class CheckpointRegistry:
    def __init__(self, store: Store, home: Path) -> None:
        self.store = store
        self.home = home

    # -- sync with disk ----------------------------------------------------------

    def _scan(self, run_id: str | None) -> Iterator[CheckpointRow]:
        if run_id is not None:
            try:
                roots = [run_dir(self.home, run_id)]
            except ValueError:
                return
        else:
            roots = sorted(path for path in runs_root(self.home).glob("*") if path.is_dir())
        for root in roots:
            for kind in CHECKPOINT_KINDS:
                base = root / kind
                if not base.is_dir():
                    continue
                for folder in sorted(base.iterdir()):
                    if folder.name.startswith(".") or not folder.is_dir():
                        continue
                    row = _row_from_folder(self.home, root.name, kind, folder)
                    if row is not None:
                        yield row

    def sync(self, run_id: str | None = None) -> None:
        """Mirror the manifests of one run (or all) into the store."""
        seen = set()
        for row in self._scan(run_id):
            seen.add(row.id)
            self.store.upsert_checkpoint(row)
        for row in self.store.list_checkpoints(run_id=run_id):
            if row.id not in seen:
                self.store.delete_checkpoint(row.id)

    def expire(self, now: datetime | None = None) -> list[str]:
        """Delete checkpoints past their TTL (files and entry); returns their ids."""
        moment = now or utcnow()
        removed = []
        for row in self.store.list_checkpoints():
            expires = parse_iso(row.expires_at)
            if expires is None or expires > moment:
                continue
            folder = self.folder(row)
            if folder.is_dir():
                # Move aside first so a reader never sees a half-deleted folder.
                doomed = folder.parent / f".{folder.name}.expired"
                shutil.rmtree(doomed, ignore_errors=True)
                try:
                    folder.rename(doomed)
                except OSError:
                    doomed = folder
                shutil.rmtree(doomed, ignore_errors=True)
            self.store.delete_checkpoint(row.id)
            removed.append(row.id)
            logger.info("checkpoint %s (%s) expired and was deleted", row.id, self.path(row))
        return removed

    # -- queries -------------------------------------------------------------------

    def folder(self, row: CheckpointRow) -> Path:
        return checkpoint_dir(self.home, row.run_id, row.kind, row.name)  # type: ignore[arg-type]

    @staticmethod
    def path(row: CheckpointRow) -> str:
        return bt_path(row.run_id, row.kind, row.name)  # type: ignore[arg-type]

    def by_run(self, run_id: str) -> list[CheckpointRow]:
        self.expire()
        self.sync(run_id)
        return self.store.list_checkpoints(run_id=run_id)

    def by_path(self, run_id: str, kind: str, name: str) -> CheckpointRow | None:
        self.expire()
        self.sync(run_id)
        return self.store.get_checkpoint(checkpoint_api_id(run_id, kind, name))  # type: ignore[arg-type]

    def by_base_model(self, base_model: str) -> list[CheckpointRow]:
        self.expire()
        self.sync()
        try:
            wanted = canonical_model_id(base_model, self.home)
        except ValueError:  # e.g. a directory that no longer exists: match the spelling
            wanted = base_model
        return [row for row in self.store.list_checkpoints()
                if row.base_model in (wanted, base_model)
                or _same_model(row.base_model, wanted, self.home)]

    def get(self, checkpoint_id: str) -> CheckpointRow | None:
        self.expire()
        row = self.store.get_checkpoint(checkpoint_id)
        if row is None:  # maybe saved since the last scan
            self.sync()
            row = self.store.get_checkpoint(checkpoint_id)
        if row is not None and not self.folder(row).is_dir():
            self.store.delete_checkpoint(row.id)
            return None
        return row

    def to_wire(self, row: CheckpointRow) -> Checkpoint:
        config: dict[str, Any] = {"r": row.lora_rank}
        if row.lora_alpha is not None:
            config["lora_alpha"] = row.lora_alpha
        return Checkpoint(
            id=row.id, run_id=row.run_id, checkpoint_id=row.name,
            checkpoint_type=row.checkpoint_type, target=row.target,  # type: ignore[arg-type]
            created_at=parse_iso(row.created_at),  # type: ignore[arg-type]
            base_model=row.base_model,
            lora_adapter_config=LoraAdapterConfig.model_validate(config),
            size_bytes=row.size_bytes, sync_status="SYNCED", path=self.path(row),
            expires_at=parse_iso(row.expires_at), step=row.step,
        )


def _same_model(stored: str, wanted: str, home: Path) -> bool:
    try:
        return canonical_model_id(stored, home) == wanted
    except ValueError:
        return False
