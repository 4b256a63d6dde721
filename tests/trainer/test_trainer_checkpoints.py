"""Checkpoints: exact resume, atomic saves, PEFT-loadable adapters, manifests, weight sync."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file

from loops_runner.storage import manifests, weight_sync
from tests.trainer.trainer_helpers import Trainer, datum

DATA = [datum([50 + (i % 6) for i in range(30)]), datum([70 + (i % 4) for i in range(21)])]


def _train(trainer: Trainer, steps: int, lr: float = 5e-3) -> None:
    for _ in range(steps):
        trainer.forward_backward(DATA)
        trainer.optim_step(learning_rate=lr)


def test_load_state_with_optimizer_reproduces_the_next_step_exactly(
        trainer_server, run_id: str) -> None:
    original = Trainer(trainer_server.url, f"{run_id}-orig")
    original.init(rank=4, seed=1)
    _train(original, 3)
    saved = original.op("save_state", {"name": "ckpt", "ttl_seconds": None})
    assert saved == {"mode": "state", "path": f"bt://loops:{run_id}-orig/weights/ckpt"}
    _train(original, 1)

    resumed = Trainer(trainer_server.url, f"{run_id}-resumed")
    resumed.init(rank=4, seed=99)  # a different init: the load must replace it
    assert resumed.op("load_state_with_optimizer", {"path": saved["path"]}) == {"step": 3}
    assert resumed.policy_version() == 3
    _train(resumed, 1)
    assert resumed.policy_version() == 4
    want, _ = original.tensors("adapter")
    got, _ = resumed.tensors("adapter")
    for key in want:
        assert torch.equal(got[key], want[key]), key

    # Weights only: fresh optimizer and step 0, so the next update differs.
    weights_only = Trainer(trainer_server.url, f"{run_id}-weights")
    weights_only.init(rank=4, seed=99)
    assert weights_only.op("load_state", {"path": saved["path"]}) == {"step": 0}
    _train(weights_only, 1)
    other, _ = weights_only.tensors("adapter")
    assert any(not torch.equal(other[k], want[k]) for k in want)

    # A checkpoint of another rank is refused with a clear error.
    mismatched = Trainer(trainer_server.url, f"{run_id}-rank8")
    mismatched.init(rank=8)
    outcome = mismatched.op_outcome("load_state", {"path": saved["path"]})
    assert outcome["status"] == "error" and "rank 4" in outcome["error"]


def test_checkpoint_files_manifest_and_checksums(trainer_server, run_id: str,
                                                 loops_home: Path) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=1)
    _train(trainer, 2)
    trainer.op("save_state", {"name": "m1", "ttl_seconds": 3600})
    folder = loops_home / "runs" / run_id / "weights" / "m1"
    manifest = json.loads((folder / "checkpoint.json").read_text())
    assert manifest["id"] == manifests.checkpoint_api_id(run_id, "weights", "m1")
    assert manifest["kind"] == "weights" and manifest["target"] == "trainer"
    assert manifest["checkpoint_type"] == "training" and manifest["checkpoint_id"] == "m1"
    assert manifest["lora_rank"] == 4 and manifest["lora_adapter_config"]["r"] == 4
    assert manifest["step"] == 2 and manifest["ttl_seconds"] == 3600
    assert manifest["expires_at"] and manifest["created_at"].endswith("Z")
    assert set(manifest["files"]) == {"adapter_model.safetensors", "adapter_config.json",
                                      "optimizer.safetensors", "trainer_state.json"}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == digest
    assert manifest["size_bytes"] == sum((folder / rel).stat().st_size
                                         for rel in manifest["files"])
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"}

    # A modified file is detected on load instead of being trained on.
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    from safetensors.torch import save_file

    save_file(tensors, weights)
    outcome = trainer.op_outcome("load_state", {"path": f"bt://loops:{run_id}/weights/m1"})
    assert outcome["status"] == "error" and "checksum" in outcome["error"]


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from loops_runner.servers.trainer import checkpoint_folders

    class Config:  # stands in for peft.LoraConfig (saves importing peft here)
        def __init__(self, r):
            self.r, self.target_modules = r, {"q_proj"}
            self.base_model_name_or_path, self.inference_mode = None, False

        def to_dict(self):
            return {"peft_type": "LORA", "r": self.r, "lora_alpha": 32,
                    "target_modules": self.target_modules}

    home, run_id, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    folder = home / "runs" / run_id / "weights" / "snap"
    old = checkpoint_folders.read_checkpoint(folder, with_optimizer=True)
    real_write = checkpoint_folders._write_bytes
    calls = []

    def write_then_hang(path, data):
        calls.append(path)
        if len(calls) == 2:  # the second file: write half of it, then get killed
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
            marker.write_text("writing")
            time.sleep(600)
        return real_write(path, data)

    checkpoint_folders._write_bytes = write_then_hang
    config = Config(old.rank)
    payload = checkpoint_folders.AdapterPayload({k: v + 1 for k, v in old.tensors.items()}, config,
                                         old.rank, 32, old.base_model)
    checkpoint_folders.write_checkpoint(home, run_id, "weights", "snap", payload, step=999,
                                 ttl_seconds=None, optimizer=old.optimizer)
""")


def test_interrupted_save_leaves_the_previous_checkpoint_loadable(
        trainer_server, run_id: str, loops_home: Path, tmp_path: Path) -> None:
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=1)
    _train(trainer, 2)
    path = trainer.op("save_state", {"name": "snap"})["path"]
    saved, _ = trainer.tensors("adapter")
    folder = loops_home / "runs" / run_id / "weights" / "snap"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(loops_home), run_id,
                              str(marker)], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the saving process ended before the kill"
            assert time.monotonic() < deadline, "the saving process never started writing"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # killed in the middle of writing a file
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    leftovers = [p.name for p in folder.parent.iterdir() if ".staging-" in p.name]
    assert leftovers, "the interrupted save should have left its staging folder"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    _train(trainer, 1)  # move away from the saved weights, then restore them
    assert trainer.op("load_state_with_optimizer", {"path": path}) == {"step": 2}
    restored, _ = trainer.tensors("adapter")
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    # The next save of the name clears the leftovers.
    trainer.op("save_state", {"name": "snap"})
    assert not [p for p in folder.parent.iterdir() if ".staging-" in p.name]


def test_sampler_weights_load_in_peft_and_match_the_trainer(
        trainer_server, run_id: str, loops_home: Path) -> None:
    from peft import PeftModel

    from loops_runner.models.loading import load_base_model

    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4, seed=1)
    _train(trainer, 2, lr=2e-2)
    result = trainer.op("save_weights_for_sampler", {"name": "for-vllm", "ttl_seconds": None,
                                                     "bump_version": False})
    assert result == {"version": 2, "path": f"bt://loops:{run_id}/sampler_weights/for-vllm"}
    folder = loops_home / "runs" / run_id / "sampler_weights" / "for-vllm"
    manifest = json.loads((folder / "checkpoint.json").read_text())
    assert manifest["kind"] == "sampler_weights" and manifest["target"] == "sampler"
    assert manifest["checkpoint_type"] == "sampler" and manifest["step"] == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint.json"]

    tokens = DATA[0]["model_input"]["chunks"][0]["tokens"]
    served = trainer.forward([datum(tokens)])["loss_fn_outputs"][0]["logprobs"]["data"]
    base = load_base_model("tiny", home=loops_home, device="cpu", dtype="float32").model
    model = PeftModel.from_pretrained(base, str(folder))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].float(), -1)
    local = logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])]
    torch.testing.assert_close(torch.tensor(served[:-1]), local, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), model.disable_adapter():  # the adapter really changes the outputs
        plain = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].float(), -1)
    assert not torch.allclose(plain[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])],
                              local, atol=1e-3)


class _StubSampler(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length))
        type(self).received.append({"path": self.path, **payload})
        body = json.dumps({"run_id": payload["run_id"], "live": payload["version"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stub_sampler() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _StubSampler.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubSampler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _StubSampler.received
    server.shutdown()


def test_publish_updates_live_pointer_and_notifies_the_paired_sampler(
        trainer_server, run_id: str, loops_home: Path, stub_sampler) -> None:
    url, received = stub_sampler
    weight_sync.register_paired_sampler(loops_home, run_id, url)
    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4)
    assert received[-1] == {"path": "/internal/live", "run_id": run_id, "version": 0,
                            "name": None}
    _train(trainer, 2)

    staged = trainer.op("save_weights_for_sampler",
                        {"name": "staged", "ttl_seconds": 60, "bump_version": False})
    assert staged["version"] == 2
    assert weight_sync.read_live(loops_home, run_id) == weight_sync.LivePointer(0, None)
    assert len(received) == 1  # staging notifies nobody

    published = trainer.op("save_weights_for_sampler", {"name": "default", "bump_version": True})
    assert published == {"version": 2,
                         "path": f"bt://loops:{run_id}/sampler_weights/default"}
    assert weight_sync.read_live(loops_home, run_id) == weight_sync.LivePointer(2, "default")
    assert received[-1] == {"path": "/internal/live", "run_id": run_id, "version": 2,
                            "name": "default"}
    # save_state never changes what the sampler serves (spec Q18) ...
    trainer.op("save_state", {"name": "s"})
    assert weight_sync.read_live(loops_home, run_id).version == 2
    # ... a load drops the live adapter (spec Q3).
    trainer.op("load_state", {"path": f"bt://loops:{run_id}/weights/s"})
    assert weight_sync.read_live(loops_home, run_id) == weight_sync.LivePointer(0, None)
    assert received[-1]["version"] == 0 and received[-1]["name"] is None


def test_expired_checkpoints_are_swept(trainer_server, run_id: str, loops_home: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from loops_runner.servers.trainer.checkpoint_folders import sweep_expired

    trainer = Trainer(trainer_server.url, run_id)
    trainer.init(rank=4)
    trainer.op("save_state", {"name": "short", "ttl_seconds": 5})
    trainer.op("save_state", {"name": "keep", "ttl_seconds": None})
    later = datetime.now(UTC) + timedelta(seconds=10)
    removed = sweep_expired(loops_home, [run_id], now=later)
    assert [p.name for p in removed] == ["short"]
    assert (loops_home / "runs" / run_id / "weights" / "keep").is_dir()
    assert not (loops_home / "runs" / run_id / "weights" / "short").exists()
