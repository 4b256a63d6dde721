"""``loops-runner export``: a checkpoint out of the system, as PEFT or as a merged HF model.

* PEFT (default): ``adapter_config.json`` + ``adapter_model.safetensors``, what
  ``PeftModel.from_pretrained`` and vLLM's ``--lora-modules`` load;
* ``merge=True``: the adapter folded into the base weights (fp32), saved with
  the tokenizer and its chat template, so ``AutoModelForCausalLM.from_pretrained``
  alone loads it.

The checkpoint is verified first (every file against the sha256 in its
``checkpoint.json``, the safetensors parsed, the adapter keys matched to the
base model), so a tampered or truncated checkpoint is refused, never exported.
The destination must be empty or absent and is written atomically: nothing a
user saved is overwritten, and a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loops_runner.storage import atomic, layout, manifests, weight_sync

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class ExportError(ValueError):
    """An export that cannot be done; the message says what to change."""


@dataclass(frozen=True)
class ExportResult:
    dest: Path
    merged: bool
    base_model: str
    rank: int
    files: list[str]


def check_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"--to {dest}: exists and is not an empty directory; exporting "
                          "never overwrites files, pick a new folder")


def verified_adapter(folder: Path) -> Any:
    """Read and verify the adapter of a checkpoint folder (LoadedCheckpoint)."""
    from safetensors import SafetensorError

    from loops_runner.servers.trainer.checkpoint_folders import read_checkpoint

    try:
        return read_checkpoint(folder, with_optimizer=False)
    except (SafetensorError, ValueError, FileNotFoundError, json.JSONDecodeError) as error:
        raise ExportError(f"checkpoint {folder} is damaged or incomplete, refusing to export "
                          f"it: {error}") from None


def write_peft(loaded: Any, folder: Path, staging: Path) -> None:
    from safetensors.torch import save_file

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    config["inference_mode"] = True
    tensors = {key: value.contiguous() for key, value in loaded.tensors.items()}
    save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _load_peft(peft_dir: Path, base_path: str, expected_keys: set[str]) -> Any:
    """The base model with the adapter attached; refused unless every LoRA tensor matched."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(peft_dir))
    wanted = set(get_peft_model_state_dict(model))
    if wanted != expected_keys:
        missing, stray = sorted(wanted - expected_keys), sorted(expected_keys - wanted)
        raise ExportError(f"the adapter does not fit the base model {base_path}: missing "
                          f"{missing[:3]} ({len(missing)}), unexpected {stray[:3]} "
                          f"({len(stray)})")
    return model


def _write_merged(peft_dir: Path, base_path: str, expected_keys: set[str],
                  staging: Path) -> None:
    from transformers import AutoTokenizer

    merged = _load_peft(peft_dir, base_path, expected_keys).merge_and_unload()
    merged.save_pretrained(str(staging), safe_serialization=True)
    # The tokenizer files carry the chat template, so the folder serves chat as is.
    AutoTokenizer.from_pretrained(base_path).save_pretrained(str(staging))


def export_folder(folder: Path, dest: Path, *, merge: bool, home: Path | None) -> ExportResult:
    """Export the checkpoint in ``folder`` (on this machine) to ``dest``."""
    from loops_runner.models.registry import resolve_model

    dest = dest.expanduser().resolve()
    check_destination(dest)
    loaded = verified_adapter(folder)
    if not loaded.base_model:
        raise ExportError(f"checkpoint {folder} does not say its base model (no "
                          "checkpoint.json or trainer_state.json); cannot export it")
    base_path = str(resolve_model(loaded.base_model, home).load_path)
    with atomic.atomic_directory(dest) as staging:
        if merge:
            with tempfile.TemporaryDirectory(prefix="loops-export-") as scratch:
                write_peft(loaded, folder, Path(scratch))
                _write_merged(Path(scratch), base_path, set(loaded.tensors), staging)
        else:
            write_peft(loaded, folder, staging)
        files = sorted(p.name for p in staging.iterdir())
    return ExportResult(dest, merge, loaded.base_model, loaded.rank, files)


@dataclass(frozen=True)
class StagedCheckpoint:
    """A checkpoint staged for ``serve-checkpoint`` (see ``stage_for_serving``)."""

    run_id: str  # the sampler's default run, whose live adapter is the checkpoint
    base_model: str
    version: int
    model_name: str  # the readable OpenAI model id: "<source run>/<checkpoint name>"


def serving_name(folder: Path, manifest: dict[str, Any] | None) -> str:
    """``<run>/<checkpoint>`` from the checkpoint's manifest, else the folder's name."""
    manifest = manifest or {}
    run, name = manifest.get("run_id"), manifest.get("checkpoint_id")
    if isinstance(run, str) and isinstance(name, str) and run and name:
        return f"{run}/{name}"
    return folder.resolve().name


def stage_for_serving(folder: Path, home: Path) -> StagedCheckpoint:
    """Copy a verified checkpoint where a sampler serves it as a run's live adapter.

    A sampler started with ``--run-id run_id`` serves it as its live adapter,
    listed under ``model_name`` (``default`` is accepted too). A run's live
    adapter (not a pinned ``bt://`` path) because OpenAI-style tools want a
    plain model name.
    """
    import hashlib

    loaded = verified_adapter(folder)
    if not loaded.base_model:
        raise ExportError(f"checkpoint {folder} does not say its base model; cannot serve it")
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    run_id, name = f"served-{digest}", "checkpoint"
    version = max(1, loaded.step)
    final = layout.checkpoint_dir(home, run_id, "sampler_weights", name)
    with atomic.atomic_directory(final) as staging:
        write_peft(loaded, folder, staging)
        # Per-file sha256s, as in every checkpoint manifest: the sampler verifies them.
        files = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                 for path in sorted(staging.iterdir()) if path.is_file()}
        atomic.atomic_write_json(staging / manifests.MANIFEST_FILE, {
            "kind": "sampler_weights", "run_id": run_id, "checkpoint_id": name,
            "base_model": loaded.base_model, "lora_rank": loaded.rank, "step": loaded.step,
            "source": str(folder), "files": files})
    weight_sync.write_live(home, run_id, version, name)
    return StagedCheckpoint(run_id, loaded.base_model, version,
                            serving_name(folder, loaded.manifest))
