"""Control-plane pieces without a server: file signing, the store, the checkpoint registry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loops_runner.servers.control_plane.auth import key_matches
from loops_runner.servers.control_plane.checkpoint_registry import CheckpointRegistry
from loops_runner.servers.control_plane.deployment_states import (
    DEPLOYING,
    FAILED,
    RUNNING,
    TRAINER,
)
from loops_runner.servers.control_plane.files import (
    FileRef,
    FileSigner,
    FileTokenError,
    load_or_create_secret,
    parse_key,
    resolve_file,
)
from loops_runner.servers.control_plane.store import Store, now_iso
from loops_runner.servers.control_plane.tables import RunRow
from loops_runner.storage.manifests import checkpoint_api_id
from tests.control_plane.helpers import write_checkpoint


def test_signed_tokens_verify_and_refuse_tampering_and_expiry(tmp_path: Path) -> None:
    signer = FileSigner(load_or_create_secret(tmp_path))
    ref = FileRef("run-1", "weights", "step-1", "adapter_model.safetensors")
    token, expiry = signer.sign(ref)
    assert signer.verify(token) == ref
    assert 3590 <= expiry - time.time() <= 3600
    payload, mac = token.split(".")
    # Flip one character of the payload, then of the signature.
    # Flip a character in the middle: the last base64 character may carry only padding
    # bits, so changing it can leave the decoded bytes (and the signature) intact.
    def flipped(text: str) -> str:
        i = len(text) // 2
        return f"{text[:i]}{'A' if text[i] != 'A' else 'B'}{text[i + 1:]}"

    for bad in (f"{flipped(payload)}.{mac}", f"{payload}.{flipped(mac)}", "garbage", ""):
        with pytest.raises(FileTokenError):
            signer.verify(bad)
    with pytest.raises(FileTokenError, match="expired"):
        signer.verify(token, now=expiry + 1)
    other = FileSigner(b"x" * 32)
    with pytest.raises(FileTokenError, match="signature"):
        other.verify(token)


def test_secret_survives_restart_with_private_permissions(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    assert load_or_create_secret(tmp_path) == first
    assert (tmp_path / "control_plane.secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("key", [
    "run/weights/name/../../../etc/passwd", "../weights/name/f", "run/weights/../f",
    "run/other/name/f", "run/weights/name//f", "run/weights/name//etc/passwd",
    "run/weights/name/a/./b", "run/weights/name",
])
def test_token_keys_cannot_leave_the_checkpoint(key: str) -> None:
    with pytest.raises(FileTokenError):
        parse_key(key)


def test_resolve_file_refuses_symlink_escape(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path, "run-1", "weights", "c1", base_model="m")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    (folder / "link").symlink_to(secret)
    with pytest.raises(FileTokenError):
        resolve_file(tmp_path, FileRef("run-1", "weights", "c1", "link"))
    assert resolve_file(tmp_path, FileRef("run-1", "weights", "c1", "adapter_config.json"))
    with pytest.raises(FileNotFoundError):
        resolve_file(tmp_path, FileRef("run-1", "weights", "c1", "missing.bin"))


def test_api_key_header_forms() -> None:
    assert key_matches("k1", "Api-Key k1")
    assert key_matches("k1", "Bearer k1")
    assert key_matches("k1", "api-key k1")
    for header in (None, "", "k1", "Api-Key k2", "Basic k1", "Api-Key", "Bearer  "):
        assert not key_matches("k1", header)


def test_store_keeps_state_across_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path)
    session = store.create_session("proj", None)
    deployment = store.create_deployment(kind=TRAINER, role=TRAINER, base_model="/m",
                                         launch_model="tiny", log_dir=tmp_path / "logs",
                                         session_id=session.id)
    store.create_run(RunRow(
        id="run-a", session_id=session.id, base_model="/m", requested_model="tiny",
        lora_rank=8, replicas=1, availability_model="dedicated", seed=None, max_seq_len=None,
        name=None, path=None, deployment_id=deployment.id, reused=0, status=DEPLOYING,
        reason=None, created_at=now_iso()))
    assert store.set_status(deployment.id, RUNNING, None, only_from=(DEPLOYING,))
    # A conditional change from the wrong status does nothing.
    assert not store.set_status(deployment.id, RUNNING, "again", only_from=(DEPLOYING,))
    assert store.set_runs_status_of(deployment.id, FAILED, "died",
                                    only_from=(DEPLOYING,)) == ["run-a"]
    store.close()

    reopened = Store(tmp_path)
    assert reopened.get_session(session.id) is not None
    row = reopened.get_deployment(deployment.id)
    assert row is not None and row.status == RUNNING and row.ready_once == 1
    assert [event.status for event in reopened.events(deployment.id)] == [DEPLOYING, RUNNING]
    run = reopened.get_run("run-a")
    assert run is not None and run.status == FAILED and run.reason == "died"
    reopened.close()


def test_registry_mirrors_manifests_overwrites_and_expires(tmp_path: Path) -> None:
    store = Store(tmp_path)
    registry = CheckpointRegistry(store, tmp_path)
    write_checkpoint(tmp_path, "run-1", "weights", "step-1", base_model="/models/a")
    write_checkpoint(tmp_path, "run-1", "sampler_weights", "step-1", base_model="/models/a")
    rows = registry.by_run("run-1")
    assert {(row.kind, row.target, row.checkpoint_type) for row in rows} == {
        ("weights", "trainer", "training"), ("sampler_weights", "sampler", "sampler")}
    # Saving the same name again keeps one entry (with the new size).
    write_checkpoint(tmp_path, "run-1", "weights", "step-1", base_model="/models/a",
                     files={"adapter_model.safetensors": b"x" * 10})
    rows = registry.by_run("run-1")
    assert len(rows) == 2
    state = next(row for row in rows if row.kind == "weights")
    assert state.size_bytes == 10 and state.id == checkpoint_api_id("run-1", "weights", "step-1")
    wire = registry.to_wire(state).model_dump(mode="json")
    assert wire["lora_adapter_config"]["r"] == 8 and wire["path"].startswith("bt://loops:run-1/")

    folder = write_checkpoint(tmp_path, "run-2", "weights", "short", base_model="/models/a",
                              ttl_seconds=1)
    assert registry.get(checkpoint_api_id("run-2", "weights", "short")) is not None
    time.sleep(1.2)
    assert registry.get(checkpoint_api_id("run-2", "weights", "short")) is None
    assert not folder.exists()
    assert registry.by_run("run-2") == []
    # A folder that disappears is dropped from the mirror.
    import shutil

    shutil.rmtree(tmp_path / "runs" / "run-1" / "sampler_weights")
    assert [row.kind for row in registry.by_run("run-1")] == ["weights"]
    store.close()


def test_store_migrates_an_older_runs_table(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "control_plane.sqlite")
    old.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, "
                "base_model TEXT NOT NULL, requested_model TEXT NOT NULL, lora_rank INTEGER "
                "NOT NULL, replicas INTEGER NOT NULL, availability_model TEXT NOT NULL, seed "
                "INTEGER, max_seq_len INTEGER, name TEXT, path TEXT, deployment_id TEXT NOT "
                "NULL, reused INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, reason TEXT, "
                "created_at TEXT NOT NULL)")
    old.execute("INSERT INTO runs VALUES ('run-old', 's', 'm', 'm', 8, 1, 'dedicated', NULL, "
                "NULL, NULL, NULL, 'dep', 0, 'RUNNING', NULL, '2025-01-01T00:00:00Z')")
    old.commit()
    old.close()
    store = Store(tmp_path)
    run = store.get_run("run-old")
    assert run is not None and run.reuse_source is None
    assert store.list_runs(reuse_source="session:s") == []
    store.close()
