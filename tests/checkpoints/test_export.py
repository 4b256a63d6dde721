"""``loops-runner export``: PEFT and merged folders give the sampler's logits; bad input refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loops_runner.checkpoint_export import ExportError, export_folder
from loops_runner.storage import layout, manifests
from loops_runner.wire.paths import bt_path
from tests.sampler import helpers

PROMPT = [463, 71, 445, 313, 77, 745, 753, 622, 85, 12, 1001]
TOP = 3


def _sampler_logprobs(url: str, path: str) -> list[dict[str, float]]:
    """Per prompt position: the sampler's logprob of the actual token and its top tokens."""
    response = helpers.sample(url, {"prompt": PROMPT, "max_tokens": 1, "temperature": 0.0,
                                    "prompt_logprobs": TOP},
                              headers={"X-Checkpoint-Path": path})
    assert response.status_code == 200, response.text
    entries = response.json()["choices"][0]["prompt_logprobs"][1:]
    return [{token: value["logprob"] for token, value in entry.items()} for entry in entries]


def _max_diff(model, sampler: list[dict[str, float]]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([PROMPT])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    diffs = [abs(logprobs[position, int(token)].item() - value)
             for position, entry in enumerate(sampler) for token, value in entry.items()]
    assert len(diffs) >= TOP * (len(PROMPT) - 1)
    return max(diffs)


@pytest.fixture
def checkpoint(loops_home: Path, tiny_model_dir: Path, run_id: str) -> str:
    adapter = helpers.make_adapter(tiny_model_dir, seed=11)
    adapter.save(loops_home, run_id, "export-me", step=4)
    return bt_path(run_id, "sampler_weights", "export-me")


def test_merged_and_peft_exports_match_the_sampler(sampler_server, loops_home, tiny_model_dir,
                                                   checkpoint, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir, peft_dir = tmp_path / "merged", tmp_path / "peft"
    result = subprocess.run([sys.executable, "-m", "loops_runner.cli", "export", checkpoint,
                             "--to", str(merged_dir), "--merge", "--home", str(loops_home)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "merged model" in result.stdout
    export_folder(layout.resolve_checkpoint_path(loops_home, checkpoint), peft_dir,
                  merge=False, home=loops_home)
    assert sorted(p.name for p in peft_dir.iterdir()) == ["adapter_config.json",
                                                          "adapter_model.safetensors"]
    sampler = _sampler_logprobs(sampler_server.url, checkpoint)

    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert _max_diff(merged, sampler) <= 1e-4
    assert AutoTokenizer.from_pretrained(str(merged_dir)).chat_template

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    assert _max_diff(with_adapter, sampler) <= 1e-4
    # The adapter matters: the base model alone is far from the sampler's answer.
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert _max_diff(plain.eval(), sampler) > 1e-2


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "truncated, no manifest"])
def test_damaged_checkpoint_is_refused_and_writes_nothing(loops_home, checkpoint, tmp_path,
                                                          damage: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(layout.resolve_checkpoint_path(loops_home, checkpoint), folder)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flipped byte":
        data[-5] ^= 0xFF
    else:
        del data[len(data) // 2:]
        if damage.endswith("no manifest"):
            (folder / manifests.MANIFEST_FILE).unlink()
    weights.write_bytes(bytes(data))
    dest = tmp_path / "out"
    expected = "manifest checksum" if damage != "truncated, no manifest" else "damaged"
    with pytest.raises(ExportError, match=expected):
        export_folder(folder, dest, merge=True, home=loops_home)
    assert not dest.exists()


def test_export_never_writes_into_a_folder_with_files(loops_home, checkpoint, tmp_path) -> None:
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "loops_runner.cli", "export", checkpoint,
                             "--to", str(dest), "--home", str(loops_home)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "not an empty directory" in result.stderr
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]
