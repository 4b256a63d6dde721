"""Checkpoint references: one grammar for ``init_from``, ``eval``, ``export`` and pipelines.

A reference is any of

* ``bt://loops:<run_id>/weights/<name>`` (or ``sampler_weights``): a checkpoint
  in the Loops registry of the backend;
* a run dir (it holds ``run.json``): its latest checkpoint, or
  ``<run_dir>@<name>`` for a named one (``@step-000050``, or just ``@50``);
* a checkpoint folder (it holds ``adapter_model.safetensors``), e.g. one written
  by ``loops-runner checkpoints download`` or ``export``.

Reading what a checkpoint is (base model, LoRA rank, step) needs JSON only,
never torch, so the runner can refuse a mismatch before provisioning anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loops_runner.runner.run_record import RUN_FILE, RunRecord

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.json"


class CheckpointRefError(ValueError):
    """A checkpoint reference that names nothing usable; the message says why."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint is: where a trainer loads it from and the adapter's shape."""

    path: str  # a bt:// path or an absolute local folder (what load_state takes)
    base_model: str | None
    rank: int | None
    step: int | None
    reference: str  # as the user wrote it


def _named(record: RunRecord, run_dir: Path, name: str) -> str:
    wanted = {name, f"step-{int(name):06d}"} if name.isdigit() else {name}
    for checkpoint in reversed(record.checkpoints):
        if checkpoint.path.rstrip("/").rsplit("/", 1)[-1] in wanted:
            return checkpoint.path
    known = ", ".join(c.path.rstrip("/").rsplit("/", 1)[-1] for c in record.checkpoints)
    raise CheckpointRefError(f"run dir {run_dir} has no checkpoint named {name!r} "
                             f"(it has: {known or 'none'})")


def resolve_path(reference: str) -> str:
    """The loadable path a reference names: a ``bt://`` path or an absolute folder."""
    text = reference.strip()
    if not text:
        raise CheckpointRefError("empty checkpoint reference; give a bt:// path, a run dir or "
                                 "a checkpoint folder")
    if text.startswith("bt://"):
        from loops_runner.wire.paths import parse_bt_path

        try:
            return str(parse_bt_path(text))
        except ValueError as error:
            raise CheckpointRefError(str(error)) from None
    location, _, name = text.partition("@")
    folder = Path(location).expanduser().resolve()
    if (folder / RUN_FILE).is_file():
        record = RunRecord.load(folder)
        if record is None:
            raise CheckpointRefError(f"run dir {folder}: {RUN_FILE} is unreadable")
        if name:
            return _named(record, folder, name)
        latest = record.latest_checkpoint()
        if latest is None:
            raise CheckpointRefError(f"run dir {folder} has no checkpoint yet (status "
                                     f"{record.status!r})")
        return latest.path
    if name:
        raise CheckpointRefError(f"{location!r} is not a run dir (no {RUN_FILE}), so "
                                 f"'@{name}' cannot name one of its checkpoints")
    if (folder / ADAPTER_WEIGHTS).is_file():
        return str(folder)
    if not folder.exists():
        raise CheckpointRefError(f"checkpoint {reference!r} does not exist (give a bt:// path, "
                                 "a run dir or a checkpoint folder)")
    raise CheckpointRefError(f"{folder} is neither a run dir (no {RUN_FILE}) nor a checkpoint "
                             f"folder (no {ADAPTER_WEIGHTS})")


def _read(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def folder_info(folder: Path, reference: str, path: str | None = None) -> CheckpointInfo:
    """Base model, rank and step of a checkpoint folder, from its JSON files."""
    manifest = _read(folder / MANIFEST)
    adapter = _read(folder / ADAPTER_CONFIG)
    state = _read(folder / TRAINER_STATE)
    rank = manifest.get("lora_rank") or adapter.get("r") or state.get("lora_rank")
    base = (manifest.get("base_model") or state.get("base_model")
            or adapter.get("base_model_name_or_path"))
    step = manifest.get("step", state.get("step"))
    return CheckpointInfo(path or str(folder), base, int(rank) if rank else None,
                          int(step) if step is not None else None, reference)


def local_folder(path: str, home: Path | None) -> Path | None:
    """The folder on this machine holding ``path``, if there is one."""
    if not path.startswith("bt://"):
        return Path(path)
    if home is None:
        return None
    from loops_runner.storage.layout import resolve_checkpoint_path

    try:
        return resolve_checkpoint_path(home, path)
    except (ValueError, FileNotFoundError):
        return None


def describe(reference: str, *, home: Path | None = None,
             service: Any | None = None) -> CheckpointInfo:
    """Resolve ``reference`` and read its base model, rank and step.

    A ``bt://`` path is read from the local data home when it is there, else
    from the backend's checkpoint registry through ``service``.
    """
    path = resolve_path(reference)
    folder = local_folder(path, home)
    if folder is not None and folder.is_dir():
        return folder_info(folder, reference, path)
    if service is None:
        raise CheckpointRefError(f"checkpoint {path!r} is not in the local data home and no "
                                 "backend was given to look it up")
    try:
        checkpoint = service.get_checkpoint_by_path(path)
    except ValueError as error:
        raise CheckpointRefError(str(error)) from None
    return CheckpointInfo(path, checkpoint.base_model, checkpoint.lora_adapter_config.rank,
                          checkpoint.step, reference)


def check_matches(info: CheckpointInfo, base_model: str, rank: int, home: Path | None,
                  field: str = "init_from") -> None:
    """Refuse a checkpoint whose base model or LoRA rank differs from the run's."""
    if info.rank is not None and info.rank != rank:
        raise CheckpointRefError(
            f"{field} {info.reference!r} has LoRA rank {info.rank}, but this run uses "
            f"model.rank={rank}; set model.rank={info.rank} or pick another checkpoint")
    if info.base_model is not None and not same_model(info.base_model, base_model, home):
        raise CheckpointRefError(
            f"{field} {info.reference!r} was trained on base model {info.base_model!r}, but "
            f"this run uses model.base_model={base_model!r}")


def same_model(a: str, b: str, home: Path | None) -> bool:
    if a == b:
        return True
    from loops_runner.models.registry import canonical_model_id

    try:
        return canonical_model_id(a, home) == canonical_model_id(b, home)
    except ValueError:
        return False
