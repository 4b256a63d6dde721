"""Storage faults: a failing checkpoint save and damaged checkpoints on load.

The failing saves are real. A small tmpfs mounted over a run's checkpoint
folder of the shared trainer fills up (ENOSPC) or is remounted read-only
(EROFS) under a save; the trainer process also gets a file-size limit
(RLIMIT_FSIZE, set from outside with prlimit), so its writes fail with EFBIG.
Mounting needs root or CAP_SYS_ADMIN (CI runs as root): without it those tests
fail and say so, they are never skipped. Damaged checkpoints are real files
changed on disk after the save.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

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
    assert "raise the file-size limit" in message
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


SAVE_OP = {"weights": "save_state", "sampler_weights": "save_weights_for_sampler"}
PAGE = 4096


def _mount(*args: str) -> None:
    command = ["mount", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed ({result.stderr.strip() or result.returncode})"
                    f"; this test mounts a real tmpfs and needs root or CAP_SYS_ADMIN (running "
                    f"as uid {os.geteuid()}). Run it as root, as CI does.", pytrace=False)


@contextmanager
def small_disk(directory: Path) -> Iterator[Path]:
    """A tmpfs of its own over ``directory`` (1 MiB to start with); unmounted at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "loops-test", str(directory))
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def _used_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def _trainer_run_state(trainer: Trainer) -> tuple[float, int]:
    return trainer.forward([datum(TOKENS)])["loss"], trainer.policy_version()


def _check_refused_save(trainer: Trainer, kind: str, folder: Path, saved: dict[str, str],
                        cause: str, remedy: str) -> None:
    """A save over ``folder`` fails naming ``cause``, the folder and what to do about it;
    the previous checkpoint and the run are as they were."""
    state = _trainer_run_state(trainer)
    outcome = trainer.op_outcome(SAVE_OP[kind], {"name": folder.name})
    fresh = trainer.op_outcome(SAVE_OP[kind], {"name": "never"})
    assert outcome["status"] == "error", outcome
    assert outcome["error_class"] == "CheckpointWriteError", outcome
    message = outcome["error"]
    assert f"saving checkpoint {kind}/{folder.name}" in message and cause in message, message
    assert "previous checkpoint of that name is unchanged" in message, message
    # It names the folder the user can act on, not the staging folder it removed.
    assert f"({folder.parent})" in message and remedy in message, message
    assert fresh["status"] == "error" and cause in fresh["error"], fresh
    assert "no checkpoint of that name" in fresh["error"], fresh
    assert _folder_digest(folder) == saved  # byte-identical
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no debris
    assert _trainer_run_state(trainer) == state  # same weights, same step


def _check_saves_again(trainer: Trainer, kind: str, destination: Path) -> None:
    """Off the faulty disk (unmounted), the run trains, and saves and loads again."""
    _step(trainer)
    trainer.op(SAVE_OP[kind], {"name": "keep"})
    assert (destination / "keep" / manifests.MANIFEST_FILE).is_file()
    if kind == "weights":
        step = trainer.op("load_state_with_optimizer",
                          {"path": f"bt://loops:{trainer.run_id}/weights/keep"})["step"]
        assert step == 2


@contextmanager
def _checkpoint_on_small_disk(trainer_server, run_id: str, loops_home: Path, kind: str,
                              seed: int) -> Iterator[tuple[Trainer, Path, Path, dict[str, str]]]:
    """A trained run whose ``kind`` folder is a small tmpfs holding one checkpoint, "keep":
    yields (trainer, that folder's parent, the checkpoint, its digest); after the disk is
    unmounted, the run must train, save and load again."""
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=seed)
    _step(trainer)
    destination = loops_home / "runs" / run_id / kind
    with small_disk(destination):
        trainer.op(SAVE_OP[kind], {"name": "keep"})
        folder = destination / "keep"
        yield trainer, destination, folder, _folder_digest(folder)
    _check_saves_again(trainer, kind, destination)


@pytest.mark.parametrize("kind", ["weights", "sampler_weights"])
def test_full_disk_during_a_save(trainer_server, run_id: str, loops_home: Path,
                                 kind: str) -> None:
    """A real ENOSPC: the tmpfs holds the previous checkpoint and half a new one."""
    with _checkpoint_on_small_disk(trainer_server, run_id, loops_home, kind, seed=4) as (
            trainer, destination, folder, saved):
        used = _used_bytes(destination)
        assert used >= 2 * PAGE, used  # the checkpoint really is on the small disk
        # Room for half of a second copy: the save fails part-way, inside its
        # staging folder, not at its first byte.
        room = -(-used // 2 // PAGE) * PAGE
        _mount("-o", f"remount,size={used + room}", str(destination))
        _check_refused_save(trainer, kind, folder, saved, "No space left on device",
                            "free space on that disk")
        assert _used_bytes(destination) == used  # the failed save gave its space back


@pytest.mark.parametrize("kind", ["weights", "sampler_weights"])
def test_read_only_disk_during_a_save(trainer_server, run_id: str, loops_home: Path,
                                      kind: str) -> None:
    """A real EROFS: the checkpoint folder's file system is remounted read-only."""
    with _checkpoint_on_small_disk(trainer_server, run_id, loops_home, kind, seed=6) as (
            trainer, destination, folder, saved):
        _mount("-o", "remount,ro", str(destination))
        _check_refused_save(trainer, kind, folder, saved, "Read-only file system",
                            "make that file system writable")


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
