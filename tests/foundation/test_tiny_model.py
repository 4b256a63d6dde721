"""The built-in ``tiny`` model: built once, reused, deterministic, loadable offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loops_runner.models import tiny

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


def test_two_builds_on_two_machines_are_identical(tmp_path: Path) -> None:
    """Different homes, thread counts and hash seeds stand in for two machines."""
    first, _ = _prepare_via_cli(tmp_path / "a", {"PYTHONHASHSEED": "1", "OMP_NUM_THREADS": "1",
                                                  "RAYON_NUM_THREADS": "1"})
    second, _ = _prepare_via_cli(tmp_path / "b", {"PYTHONHASHSEED": "99", "OMP_NUM_THREADS": "2",
                                                   "RAYON_NUM_THREADS": "2"})
    hashes_a = json.loads((Path(first) / tiny.BUILD_INFO).read_text())["sha256"]
    hashes_b = json.loads((Path(second) / tiny.BUILD_INFO).read_text())["sha256"]
    assert hashes_a == hashes_b
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= set(hashes_a)


def test_recipe_version_change_triggers_rebuild(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    built = tiny.prepare(tmp_path)
    monkeypatch.setattr(tiny, "RECIPE_VERSION", tiny.RECIPE_VERSION + 1)
    assert not tiny.is_built(tiny.model_dir(tmp_path))
    rebuilt = tiny.prepare(tmp_path)
    assert rebuilt != built and tiny.is_built(rebuilt)


def test_model_loads_and_generates_offline(tiny_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) == tiny.VOCAB_TARGET
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
