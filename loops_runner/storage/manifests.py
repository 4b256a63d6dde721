"""Checkpoint manifests: the ``checkpoint.json`` in every checkpoint folder.

The manifest is the source of truth the control plane's checkpoint registry
mirrors. It lists each file's sha256, so a damaged or modified checkpoint is
refused whole (``CheckpointIntegrityError``), never half-loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loops_runner.storage.atomic import read_json
from loops_runner.storage.layout import run_dir, runs_root
from loops_runner.wire.paths import CHECKPOINT_KINDS, CheckpointKind

MANIFEST_FILE = "checkpoint.json"
TARGET_BY_KIND: dict[str, str] = {"weights": "trainer", "sampler_weights": "sampler"}


def checkpoint_api_id(run_id: str, kind: CheckpointKind, name: str) -> str:
    """A globally unique, stable API id for (run, kind, name).

    Stable so that saving a name again overwrites one registry entry.
    """
    digest = hashlib.sha256(f"{run_id}\0{kind}\0{name}".encode()).hexdigest()[:20]
    return f"ckpt-{digest}"


def iter_checkpoint_manifests(home: Path, run_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every readable ``checkpoint.json`` under the data home (or one run)."""
    roots = [run_dir(home, run_id)] if run_id else sorted(runs_root(home).glob("*"))
    for root in roots:
        for kind in CHECKPOINT_KINDS:
            for manifest_path in sorted((root / kind).glob(f"*/{MANIFEST_FILE}")):
                payload = read_json(manifest_path)
                if isinstance(payload, dict):
                    yield payload


class CheckpointIntegrityError(ValueError):
    """A checkpoint's files do not match its manifest: refused, never half-loaded."""


def manifest_checksums(directory: Path) -> tuple[dict[str, Any] | None, dict[str, str] | None]:
    """A checkpoint's manifest and its per-file sha256s; (None, None) for a plain PEFT folder.

    A manifest that is present but unreadable, or lists no checksums, means a
    damaged checkpoint: refusing it beats loading its files unverified.
    """
    path = directory / MANIFEST_FILE
    if not path.exists():
        return None, None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointIntegrityError(
            f"checkpoint manifest {path} is unreadable (corrupted): {exc}") from None
    checksums = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(checksums, dict) or not all(
            isinstance(value, str) for value in checksums.values()):
        raise CheckpointIntegrityError(
            f"checkpoint manifest {path} has no per-file sha256 list ('files')")
    return manifest, checksums


def verified_bytes(directory: Path, relative: str, checksums: dict[str, str] | None) -> bytes:
    """A checkpoint file's bytes, checked against the manifest's sha256 when there is one."""
    path = directory / relative
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {relative}")
    data = path.read_bytes()
    if checksums is not None:
        expected = checksums.get(relative)
        if expected is None:
            raise CheckpointIntegrityError(
                f"checkpoint file {path} has no sha256 in its manifest (modified manifest)")
        if hashlib.sha256(data).hexdigest() != expected:
            raise CheckpointIntegrityError(
                f"checkpoint file {path} does not match its manifest checksum (corrupted or "
                "modified)")
    return data
