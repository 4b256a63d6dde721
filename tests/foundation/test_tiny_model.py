"""The built-in ``tiny`` model: built once, reused, deterministic, loadable offline."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loops_runner.models import tiny
from loops_runner.models.machine import recorded_machine
from loops_runner.tiny_build import builder

CLI = [sys.executable, "-m", "loops_runner.cli"]


def _prepare_via_cli(home: Path, extra_env: dict[str, str] | None = None) -> tuple[str, float]:
    started = time.monotonic()
    result = subprocess.run(
        [*CLI, "models", "prepare", "tiny", "--home", str(home)],
        capture_output=True, text=True, check=True, env={**os.environ, **(extra_env or {})},
    )
    return result.stdout.strip().splitlines()[-1], time.monotonic() - started


def test_prepare_twice_reuses_the_build(tmp_path: Path) -> None:
    first, _ = _prepare_via_cli(tmp_path)
    info_before = (Path(first) / tiny.BUILD_INFO).stat().st_mtime_ns
    second, _ = _prepare_via_cli(tmp_path)
    assert first == second == str(tiny.model_dir(tmp_path))
    # Reused, not rebuilt: the build stamp is untouched.
    assert (Path(second) / tiny.BUILD_INFO).stat().st_mtime_ns == info_before
    # What prepare installs is exactly the shipped pretrained folder.
    shipped = tiny.build_info(tiny.SHIPPED_DIR)["sha256"]
    for name, digest in shipped.items():
        assert hashlib.sha256((Path(first) / name).read_bytes()).hexdigest() == digest


def test_recipe_version_change_needs_a_build(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    built = tiny.prepare(tmp_path)
    monkeypatch.setattr(tiny, "RECIPE_VERSION", tiny.RECIPE_VERSION + 1)
    assert not tiny.is_built(tiny.model_dir(tmp_path))
    # The shipped copy is of the old version: prepare refuses (naming the command
    # that builds) and installs nothing, instead of silently pretraining for minutes.
    with pytest.raises(tiny.TinyNotShippedError, match="loops-runner models build tiny"):
        tiny.prepare(tmp_path)
    assert not tiny.model_dir(tmp_path).exists()
    # The build from scratch, the code path `models build tiny` runs, with a few steps
    # (the full build is the reproduction test's).
    settings = dataclasses.replace(builder.PRETRAIN, steps=3, chats=64, prose_paragraphs=8,
                                   lexicon_repeats=1)
    rebuilt = builder.build_into_home(tmp_path, settings)
    assert rebuilt != built and tiny.is_built(rebuilt)
    assert tiny.prepare(tmp_path) == rebuilt
    info = tiny.build_info(rebuilt)
    assert info["recipe_version"] == tiny.RECIPE_VERSION and info["pretrain"]["steps"] == 3
    assert 0.0 <= info["heldout_accuracy"]["default_mix"] <= 1.0


def test_damaged_shipped_weights_are_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = tmp_path / "shipped"
    shutil.copytree(tiny.SHIPPED_DIR, damaged)
    weights = bytearray((damaged / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (damaged / "model.safetensors").write_bytes(bytes(weights))
    monkeypatch.setattr(tiny, "SHIPPED_DIR", damaged)
    with pytest.raises(RuntimeError, match="does not match its recorded sha256"):
        tiny.prepare(tmp_path / "home")
    # Nothing half-installed is left where a later prepare would trust it.
    assert not tiny.is_built(tiny.model_dir(tmp_path / "home"))


def test_base_accuracy_is_inside_the_band(tiny_model_dir: Path) -> None:
    """The pretrained base knows something and leaves room to learn (10-60% held-out)."""
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loops_runner.tasks import sample_rows
    from loops_runner.tiny_build.pretrain import greedy_accuracy

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # A fixed sample other than the one the build scored.
    rows = sample_rows(150, split="heldout", seed=11, unique=True)
    accuracy = greedy_accuracy(model, tokenizer, rows)
    assert 0.10 <= accuracy["all"] <= 0.60, accuracy
    recorded = tiny.build_info(tiny_model_dir)["heldout_accuracy"]
    assert 0.10 <= recorded["default_mix"] <= 0.60, recorded
    # Families differ: some are mostly solved, some mostly not (room for every recipe).
    assert max(accuracy.values()) >= 0.5 and min(accuracy.values()) <= 0.2, accuracy


def test_models_info_prints_the_build_figures(tiny_model_dir: Path, loops_home: Path) -> None:
    result = subprocess.run([*CLI, "models", "info", "tiny", "--home", str(loops_home)],
                            capture_output=True, text=True, check=True, timeout=120)
    recorded = tiny.build_info(tiny_model_dir)
    assert f"parameters {recorded['parameters']:,}" in result.stdout
    labels = {"all": "all families", "default_mix": "default task mix"}
    for family, value in recorded["heldout_accuracy"].items():
        assert labels.get(family, family) in result.stdout and f"{value:.0%}" in result.stdout
    built_on = recorded_machine(recorded)
    assert built_on is not None and f"built on {built_on.describe()}" in result.stdout


def test_model_loads_and_generates_offline(tiny_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert len(tokenizer) <= model.config.vocab_size == builder.VOCAB_TARGET
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Reverse the word: apple"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert output.shape[1] == prompt["input_ids"].shape[1] + 5 or \
        output[0, -1].item() == tokenizer.eos_token_id
    with torch.no_grad():
        logits = model(**prompt).logits
    assert torch.isfinite(logits).all()


def test_chat_template_marks_assistant_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    )
    encoded = tokenizer.apply_chat_template(messages, return_dict=True,
                                            return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == "5<|im_end|>"
    # Special tokens are single ids; the text round-trips.
    assert len(tokenizer.encode("<|im_start|>")) == 1
    assert tokenizer.decode(tokenizer.encode("Hello world 123!")) == "Hello world 123!"
