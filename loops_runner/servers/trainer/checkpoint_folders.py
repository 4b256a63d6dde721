"""Checkpoint folders: PEFT adapter files, optimizer state, manifest (spec 7).

Layout of ``<home>/runs/<run>/<kind>/<name>/``:

* ``adapter_model.safetensors`` + ``adapter_config.json``: a standard PEFT
  LoRA adapter (``PeftModel.from_pretrained`` and vLLM load it as is);
* ``weights`` checkpoints (``save_state``) add ``optimizer.safetensors``
  (AdamW moments keyed ``exp_avg/<param>``, ``exp_avg_sq/<param>``) and
  ``trainer_state.json`` (step, rank, alpha, base model);
* ``checkpoint.json``: the manifest the control plane's registry reads, with a
  sha256 of every file, checked again on load.

Every folder is written to a staging directory and renamed into place
(``atomic.atomic_directory``), so a crash or kill mid-save leaves the previous
checkpoint of that name intact. Only safetensors and JSON are ever read: no
pickle, whatever the folder holds.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from loops_runner.servers.trainer.optimizer import AdamState
from loops_runner.storage import atomic, layout, manifests, weight_sync
from loops_runner.wire.paths import CHECKPOINT_KINDS, CheckpointKind, bt_path

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointWriteError(OSError):
    """A save failed on the storage side (disk full, read-only, file-size limit).

    Nothing of the run changed and the previous checkpoint of that name is
    intact (the new one was being written to a staging folder).
    """


@dataclass
class AdapterPayload:
    """What a checkpoint stores about one run's adapter."""

    tensors: dict[str, torch.Tensor]  # PEFT state-dict keys (no adapter name) -> CPU tensors
    lora_config: Any  # peft.LoraConfig of the run
    rank: int
    alpha: float
    base_model: str  # canonical model id


@dataclass
class LoadedCheckpoint:
    directory: Path
    tensors: dict[str, torch.Tensor]
    rank: int
    base_model: str | None
    step: int
    optimizer: AdamState | None
    manifest: dict[str, Any] | None


def _write_bytes(path: Path, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, payload: Any) -> str:
    return _write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _adapter_config_dict(adapter: AdapterPayload) -> dict[str, Any]:
    config = copy.deepcopy(adapter.lora_config)
    config.base_model_name_or_path = adapter.base_model
    config.inference_mode = True
    payload = config.to_dict()
    # JSON has no sets; PEFT itself writes them as lists.
    return {k: sorted(v) if isinstance(v, set) else v for k, v in payload.items()}


def write_checkpoint(
    home: Path,
    run_id: str,
    kind: CheckpointKind,
    name: str,
    adapter: AdapterPayload,
    *,
    step: int,
    ttl_seconds: int | None,
    optimizer: AdamState | None = None,
) -> Path:
    """Write one checkpoint folder atomically; return its final path.

    A storage failure raises ``CheckpointWriteError`` naming the cause; the
    previous folder of that name is left exactly as it was.
    """
    final = layout.checkpoint_dir(home, run_id, kind, name)
    try:
        return _write_checkpoint(final, run_id, kind, name, adapter, step=step,
                                 ttl_seconds=ttl_seconds, optimizer=optimizer)
    except OSError as exc:
        cause = os.strerror(exc.errno) if exc.errno else str(exc)
        previous = ("the previous checkpoint of that name is unchanged" if final.exists()
                    else "no checkpoint of that name was written")
        remedy = _REMEDIES.get(exc.errno or 0, "free space or fix the folder's permissions")
        raise CheckpointWriteError(
            exc.errno or 0, f"saving checkpoint {kind}/{name} of run {run_id!r} failed: {cause}"
            f" ({_where(exc, final)}); {previous}. The run is unchanged: {remedy}, then save "
            "again") from exc


# What a user can do about each storage failure.
_REMEDIES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "make that file system writable again",
    errno.EACCES: "fix the folder's permissions",
    errno.EPERM: "fix the folder's permissions",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
}


def _where(exc: OSError, final: Path) -> Path:
    """The path to name: never one inside the staging folder, which is gone by now
    (a read-only disk refuses the staging folder itself, a full one a file in it)."""
    if not exc.filename:
        return final.parent
    path = Path(str(exc.filename))
    inside = path.relative_to(final.parent).parts if path.is_relative_to(final.parent) else ()
    if inside and inside[0].startswith(f".{final.name}.staging-"):
        return final.parent
    return path


def _write_checkpoint(final: Path, run_id: str, kind: CheckpointKind, name: str,
                      adapter: AdapterPayload, *, step: int, ttl_seconds: int | None,
                      optimizer: AdamState | None) -> Path:
    atomic.cleanup_stale(final.parent)  # leftovers of earlier interrupted saves
    files: dict[str, str] = {}
    with atomic.atomic_directory(final) as staging:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter.tensors.items()}
        files[ADAPTER_WEIGHTS] = _write_bytes(
            staging / ADAPTER_WEIGHTS, save_safetensors(tensors, metadata={"format": "pt"}))
        files[ADAPTER_CONFIG] = _write_json(staging / ADAPTER_CONFIG,
                                            _adapter_config_dict(adapter))
        if kind == "weights":
            if optimizer is None:
                raise ValueError("a training checkpoint needs the optimizer state")
            moments: dict[str, torch.Tensor] = {}
            for key, value in optimizer.exp_avg.items():
                moments[f"exp_avg/{key}"] = value.detach().to("cpu").contiguous()
                moments[f"exp_avg_sq/{key}"] = (
                    optimizer.exp_avg_sq[key].detach().to("cpu").contiguous())
            files[OPTIMIZER_FILE] = _write_bytes(
                staging / OPTIMIZER_FILE,
                save_safetensors(moments, metadata={"adam_step": str(optimizer.step)}))
            files[TRAINER_STATE] = _write_json(staging / TRAINER_STATE, {
                "format_version": FORMAT_VERSION, "step": step, "adam_step": optimizer.step,
                "lora_rank": adapter.rank, "lora_alpha": adapter.alpha,
                "base_model": adapter.base_model,
            })
        size = sum((staging / rel).stat().st_size for rel in files)
        _write_json(staging / manifests.MANIFEST_FILE,
                    _manifest(run_id, kind, name, adapter, step, ttl_seconds, files, size))
    return final


def _manifest(run_id: str, kind: CheckpointKind, name: str, adapter: AdapterPayload,
              step: int, ttl_seconds: int | None, files: dict[str, str],
              size: int) -> dict[str, Any]:
    created = datetime.now(UTC).replace(microsecond=0)
    expires = created + timedelta(seconds=ttl_seconds) if ttl_seconds else None
    target = manifests.TARGET_BY_KIND[kind]
    return {
        "id": manifests.checkpoint_api_id(run_id, kind, name),
        "run_id": run_id,
        "checkpoint_id": name,
        "kind": kind,
        "target": target,
        "checkpoint_type": "training" if kind == "weights" else "sampler",
        "path": bt_path(run_id, kind, name),
        "base_model": adapter.base_model,
        "lora_rank": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_adapter_config": {"r": adapter.rank, "lora_alpha": adapter.alpha,
                                "target_modules": sorted(adapter.lora_config.target_modules)},
        "step": step,
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "ttl_seconds": ttl_seconds,
        "expires_at": expires.isoformat().replace("+00:00", "Z") if expires else None,
        "size_bytes": size,
        "files": files,
    }


# -- reading -------------------------------------------------------------------


def read_checkpoint(directory: Path, *, with_optimizer: bool) -> LoadedCheckpoint:
    """Read (and verify) a checkpoint folder, or any PEFT LoRA adapter folder."""
    manifest, checksums = manifests.manifest_checksums(directory)
    if not (directory / ADAPTER_WEIGHTS).is_file():
        pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
        hint = (f" (found {', '.join(sorted(pickles))}: pickled weights are never loaded; "
                "convert them to safetensors)") if pickles else ""
        raise FileNotFoundError(f"checkpoint {directory} has no {ADAPTER_WEIGHTS}{hint}")
    tensors = load_safetensors(manifests.verified_bytes(directory, ADAPTER_WEIGHTS, checksums))
    config = json.loads(manifests.verified_bytes(directory, ADAPTER_CONFIG, checksums))
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"checkpoint {directory} is a {config.get('peft_type')} adapter, "
                         "not LoRA")
    rank = int(config.get("r", 0))
    state: dict[str, Any] | None = None
    if (directory / TRAINER_STATE).is_file():
        state = json.loads(manifests.verified_bytes(directory, TRAINER_STATE, checksums))
    base_model = (manifest or {}).get("base_model") or (state or {}).get("base_model")
    step = int((state or {}).get("step", (manifest or {}).get("step", 0)))
    optimizer: AdamState | None = None
    if with_optimizer:
        if state is None or not (directory / OPTIMIZER_FILE).is_file():
            raise ValueError(f"checkpoint {directory} holds no optimizer state (it is not a "
                             "save_state checkpoint); use load_state instead")
        raw = load_safetensors(manifests.verified_bytes(directory, OPTIMIZER_FILE, checksums))
        optimizer = AdamState(step=int(state.get("adam_step", step)))
        for key, value in raw.items():
            slot, _, param = key.partition("/")
            if slot == "exp_avg":
                optimizer.exp_avg[param] = value
            elif slot == "exp_avg_sq":
                optimizer.exp_avg_sq[param] = value
        if set(optimizer.exp_avg) != set(optimizer.exp_avg_sq):
            raise ValueError(f"checkpoint {directory}: optimizer moments are incomplete")
    return LoadedCheckpoint(directory, tensors, rank, base_model, step, optimizer, manifest)


def check_layout(path: str, what: str, found: dict[str, torch.Tensor],
                 params: dict[str, torch.nn.Parameter]) -> None:
    """Refuse a checkpoint whose tensors do not match the run's LoRA keys and shapes."""
    missing = sorted(set(params) - set(found))
    extra = sorted(set(found) - set(params))
    if missing or extra:
        raise ValueError(f"checkpoint {path}: {what} do not match this model's LoRA layout "
                         f"({len(missing)} missing, e.g. {missing[:1]}; {len(extra)} unexpected, "
                         f"e.g. {extra[:1]})")
    for key, param in params.items():
        if tuple(found[key].shape) != tuple(param.shape):
            raise ValueError(f"checkpoint {path}: {what} {key} has shape "
                             f"{tuple(found[key].shape)}, expected {tuple(param.shape)}")


def sweep_expired(home: Path, run_ids: list[str], now: datetime | None = None) -> list[Path]:
    """Delete checkpoints of ``run_ids`` whose ``expires_at`` has passed (ttl_seconds)."""
    now = now or datetime.now(UTC)
    removed = []
    for run_id in run_ids:
        live = weight_sync.read_live(home, run_id)
        for manifest in manifests.iter_checkpoint_manifests(home, run_id):
            expires = manifest.get("expires_at")
            if not expires:
                continue
            try:
                when = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
            except ValueError:
                continue
            if when <= now:
                kind, name = manifest.get("kind"), manifest.get("checkpoint_id")
                if kind == "sampler_weights" and name == live.name:
                    continue  # a paired sampler is serving it; the next publish replaces it
                if kind in CHECKPOINT_KINDS and isinstance(name, str):
                    path = layout.checkpoint_dir(home, run_id, kind, name)
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
    return removed
