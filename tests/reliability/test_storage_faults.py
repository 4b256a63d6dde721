"""Storage faults: a failing checkpoint save and damaged checkpoints on load.

The failing save is real: the trainer process gets a file-size limit
(RLIMIT_FSIZE, set from outside with prlimit), so its writes fail with EFBIG
exactly where a full disk fails with ENOSPC. Damaged checkpoints are real
files changed on disk after the save.
"""

from __future__ import annotations

import hashlib
import json
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from loops_runner.storage import manifests
from tests.trainer.trainer_helpers import Trainer, datum

TOKENS = [21, 22, 23, 24, 25, 26, 27, 28]


def _step(trainer: Trainer) -> None:
    trainer.forward_backward([datum(TOKENS)])
    trainer.optim_step(1e-2)


def _folder_digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir())}


@contextmanager
def file_size_limit(pid: int, limit_bytes: int) -> Iterator[None]:
    """Every file the process writes stops at ``limit_bytes`` (EFBIG), as on a full disk."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


def test_failed_save_keeps_previous_checkpoint_and_the_run(trainer_server, run_id: str,
                                                           loops_home: Path) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=2)
    _step(trainer)
    trainer.op("save_state", {"name": "keep"})
    folder = loops_home / "runs" / run_id / "weights" / "keep"
    saved = _folder_digest(folder)
    _step(trainer)
    loss_before = trainer.forward([datum(TOKENS)])["loss"]

    with file_size_limit(trainer_server.pid, 512):
        outcome = trainer.op_outcome("save_state", {"name": "keep"})
        fresh = trainer.op_outcome("save_weights_for_sampler", {"name": "never"})

    assert outcome["status"] == "error"
    message = outcome["error"]
    assert "saving checkpoint weights/keep" in message and "File too large" in message
    assert "previous checkpoint of that name is unchanged" in message
    assert outcome["error_class"] == "CheckpointWriteError"
    assert fresh["status"] == "error" and "no checkpoint of that name" in fresh["error"]
    # The previous checkpoint is byte-identical and no staging debris is left.
    assert _folder_digest(folder) == saved
    assert [p.name for p in folder.parent.iterdir()] == ["keep"]
    assert not (loops_home / "runs" / run_id / "sampler_weights" / "never").exists()
    # The run is alive and unchanged: same loss, and it trains, saves and loads again.
    assert trainer.forward([datum(TOKENS)])["loss"] == loss_before
    assert trainer.op("load_state_with_optimizer",
                      {"path": f"bt://loops:{run_id}/weights/keep"})["step"] == 1
    _step(trainer)
    trainer.op("save_state", {"name": "keep"})
    assert _folder_digest(folder) != saved


def _saved(trainer: Trainer, loops_home: Path, kind: str, name: str) -> Path:
    op = "save_state" if kind == "weights" else "save_weights_for_sampler"
    trainer.op(op, {"name": name})
    return loops_home / "runs" / trainer.run_id / kind / name


def test_damaged_checkpoints_are_refused_on_load(trainer_server, sampler_server, run_id: str,
                                                 loops_home: Path) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=3)
    _step(trainer)
    damages = {
        "flipped byte": lambda folder: _flip_byte(folder / "optimizer.safetensors"),
        "garbage manifest": lambda folder: (folder / manifests.MANIFEST_FILE).write_text("{oops"),
        "hash removed": lambda folder: _edit_manifest(
            folder, lambda m: m["files"].pop("adapter_model.safetensors")),
        "no hash list": lambda folder: _edit_manifest(folder, lambda m: m.pop("files")),
    }
    for case, damage in damages.items():
        folder = _saved(trainer, loops_home, "weights", case.replace(" ", "-"))
        damage(folder)
        outcome = trainer.op_outcome("load_state_with_optimizer",
                                     {"path": f"bt://loops:{run_id}/weights/{folder.name}"})
        assert outcome["status"] == "error", case
        assert outcome["error_class"] == "CheckpointIntegrityError", (case, outcome)
        assert "manifest" in outcome["error"] or "checksum" in outcome["error"], outcome
    # The refusals left the run as it was: still step 1, still training.
    assert trainer.op("save_state", {"name": "after"}) and _load_step(trainer, "after") == 1

    # The sampler refuses a corrupted published adapter too, naming the checksum.
    folder = _saved(trainer, loops_home, "sampler_weights", "served")
    _flip_byte(folder / "adapter_model.safetensors")
    response = httpx.post(f"{sampler_server.url}/sample", timeout=60.0, json={
        "prompt": TOKENS[:4], "max_tokens": 2, "temperature": 0.0},
        headers={"X-Checkpoint-Path": f"bt://loops:{run_id}/sampler_weights/served"})
    assert response.status_code == 400, response.text
    assert "checksum" in response.json()["error"]["message"]


def _load_step(trainer: Trainer, name: str) -> int:
    return int(trainer.op("load_state_with_optimizer",
                          {"path": f"bt://loops:{trainer.run_id}/weights/{name}"})["step"])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = folder / manifests.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
