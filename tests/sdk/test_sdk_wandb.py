"""W&B streaming: with WANDB_MODE=offline a run directory holds the logged metrics.

The offline run's transaction log (``run-<id>.wandb``) is read back with a
small reader of its record format, and its history rows parsed with wandb's
own protobuf definitions: one row per optimizer step, carrying the step's
loss and optimizer metrics.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from loops_runner.sdk import TrainingClient, WandbConfig
from loops_runner.sdk.wandb_logger import resolve_mode
from tests.sdk.helpers import LR, batch

BLOCK = 32768
RECORD_HEADER = 7  # crc32 (4), length (2), type (1)
FILE_HEADER = 7  # ":W&B", magic (2), version (1)


def read_history(path: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    position, pending, payloads = FILE_HEADER, b"", []
    while position + RECORD_HEADER <= len(raw):
        left = BLOCK - position % BLOCK
        if left < RECORD_HEADER:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + RECORD_HEADER])
        position += RECORD_HEADER
        if position + length > len(raw):  # still being written
            break
        pending += raw[position:position + length]
        position += length
        if kind in (1, 4):  # a full record, or the last piece of a split one
            payloads.append(pending)
            pending = b""
    rows = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_offline_run_directory_holds_the_logged_metrics(trainer_server, run_id, tmp_path,
                                                        monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    client = TrainingClient(trainer_server.url, lora_rank=4, base_model="tiny", run_id=run_id,
                            wandb_config=WandbConfig(project="sdk-tests", name="wandb-run"))
    losses = []
    for step in range(3):
        losses.append(client.forward_backward(batch(step)).result().loss)
        client.optim_step(LR).result()
    client.close()

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1
    # wandb's writer process may flush the log a moment after finish() returns.
    deadline = time.monotonic() + 20
    while len(rows := read_history(logs[0])) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [row["optim_step"] for row in rows] == [1, 2, 3]
    assert [row["loss"] for row in rows] == losses
    assert all(row["grad_norm"] > 0 and row["learning_rate"] == LR.learning_rate
               for row in rows)


def test_wandb_is_offline_without_credentials(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert resolve_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password secret\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode() is None  # configured: wandb decides (online)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode() is None  # the user's WANDB_MODE is obeyed
