"""Data-home layout, bt:// paths, atomic directories and model resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from loops_runner.models.registry import canonical_model_id, resolve_model
from loops_runner.storage import atomic, layout, manifests, weight_sync
from loops_runner.wire.paths import bt_path, parse_bt_path


def test_bt_paths_roundtrip_and_refuse_escapes() -> None:
    path = bt_path("run-1", "weights", "step-10")
    assert path == "bt://loops:run-1/weights/step-10"
    parsed = parse_bt_path(path + "/")
    assert (parsed.run_id, parsed.kind, parsed.name) == ("run-1", "weights", "step-10")
    for bad in ("bt://loops:run/weights/..", "bt://loops:../weights/x", "bt://other/weights/x",
                "bt://loops:run/weights/a/b", "s3://bucket/x"):
        with pytest.raises(ValueError):
            parse_bt_path(bad)


def test_resolve_checkpoint_path_stays_in_home(tmp_path: Path) -> None:
    target = layout.checkpoint_dir(tmp_path, "r1", "weights", "c1")
    target.mkdir(parents=True)
    assert layout.resolve_checkpoint_path(tmp_path, "bt://loops:r1/weights/c1") == target
    assert layout.resolve_checkpoint_path(tmp_path, f"file://{target}") == target
    with pytest.raises(FileNotFoundError):
        layout.resolve_checkpoint_path(tmp_path, "bt://loops:r1/weights/missing")
    with pytest.raises(ValueError):
        layout.resolve_checkpoint_path(tmp_path, "s3://bucket/key")


def test_atomic_directory_keeps_previous_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "ckpt"
    with atomic.atomic_directory(final) as staging:
        (staging / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic.atomic_directory(final) as staging:
        (staging / "a.txt").write_text("half-written")
        raise RuntimeError("killed mid-save")
    assert (final / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging left behind
    with atomic.atomic_directory(final) as staging:
        (staging / "a.txt").write_text("v2")
    assert (final / "a.txt").read_text() == "v2"


def test_cleanup_restores_moved_aside_checkpoint(tmp_path: Path) -> None:
    aside = tmp_path / ".ckpt.old-123"
    aside.mkdir()
    (aside / "a.txt").write_text("v1")
    (tmp_path / ".ckpt.staging-xyz").mkdir()
    atomic.cleanup_stale(tmp_path)
    assert (tmp_path / "ckpt" / "a.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_live_pointer_and_paired_sampler(tmp_path: Path) -> None:
    assert weight_sync.read_live(tmp_path, "r1") == weight_sync.LivePointer(0, None)
    weight_sync.write_live(tmp_path, "r1", 3, "default")
    live = weight_sync.read_live(tmp_path, "r1")
    assert live == weight_sync.LivePointer(3, "default")
    assert live.adapter_dir(tmp_path, "r1") == tmp_path / "runs/r1/sampler_weights/default"
    weight_sync.register_paired_sampler(tmp_path, "r1", "http://127.0.0.1:9")
    assert weight_sync.paired_sampler_url(tmp_path, "r1") == "http://127.0.0.1:9"


def test_checkpoint_ids_are_stable_and_distinct() -> None:
    a = manifests.checkpoint_api_id("r1", "weights", "x")
    assert a == manifests.checkpoint_api_id("r1", "weights", "x")
    assert a != manifests.checkpoint_api_id("r1", "sampler_weights", "x")
    assert a != manifests.checkpoint_api_id("r2", "weights", "x")


def test_model_spellings_resolve_to_one_id(tiny_model_dir: Path, loops_home: Path) -> None:
    assert canonical_model_id("tiny", loops_home) == str(tiny_model_dir)
    assert canonical_model_id(str(tiny_model_dir), loops_home) == str(tiny_model_dir)
    assert resolve_model("qwen3-0.6b").load_path == "Qwen/Qwen3-0.6B"
    assert resolve_model("Qwen/Qwen3-0.6B").registry_name == "qwen3-0.6b"
    assert resolve_model("some-org/some-model").load_path == "some-org/some-model"
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model("./no/such/dir")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_model("")
