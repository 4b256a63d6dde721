"""How the built-in ``tiny`` is made: tokenizer, architecture, pretraining, build info.

A byte-level BPE tokenizer trained on the package's own synthetic corpus, with
Qwen-style chat special tokens and a chat template that marks assistant turns
for ``return_assistant_tokens_mask``, and a Qwen3 model whose full weights are
pretrained on task chats, prose and word facts (:mod:`.pretrain`).

``scripts/pretrain_tiny.py`` runs :func:`build` to refresh the folder the
package ships (:data:`loops_runner.models.tiny.SHIPPED_DIR`);
``loops-runner models build tiny`` runs :func:`build_into_home`. The registry
side (where ``tiny`` lives, installing the shipped copy) is
:mod:`loops_runner.models.tiny`; it never imports this module, so loading a
model never pulls in the task registry.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loops_runner.models import tiny
from loops_runner.tiny_build.pretrain import PretrainSettings

SEED = 20251129
VOCAB_TARGET = 4096
# Full-weight pretraining before the model is saved (see tiny_build/pretrain.py and
# docs/tiny-model.md for the measurements behind these numbers).
PRETRAIN = PretrainSettings(
    steps=2000, batch_size=64, max_length=96, learning_rate=5e-3, warmup_steps=50,
    chats=30000, prose_paragraphs=3000, lexicon_repeats=4, threads=2, seed=SEED,
)
# Held-out questions the build scores greedily (per family, in the build info).
ACCURACY_SAMPLE = 200
# The random init's embeddings are scaled up: with the usual std 0.02 the tied
# output embeddings cap every logit near +-2.5 and early training crawls.
EMBEDDING_INIT_SCALE = 4.0
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}

# Qwen-style chat template. The {% generation %} markers let
# apply_chat_template(..., return_assistant_tokens_mask=True) derive
# assistant-only loss masks.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)



def _train_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from loops_runner.data.synthetic import tokenizer_corpus

    tokenizer = Tokenizer(models.BPE())
    # Whitespace is its own token and digits are split one by one (as Qwen's
    # tokenizer does). A word is then the same token wherever it stands (no
    # "word" vs " word" pair), so copying a word from the question is copying a
    # token, which a small model learns many times faster; and numbers share
    # digit tokens instead of being a thousand unrelated ones.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=ARCHITECTURE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _progress_reporter(total: int):  # -> (callback, close)
    """A rich progress bar on stderr for a build from scratch (it takes minutes)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("pretraining tiny"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} steps  loss {task.fields[loss]}"),
                        TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = progress.add_task("pretrain", total=total, loss="-")
    progress.start()

    def on_step(step: int, loss: float) -> None:
        progress.update(task, completed=step + 1, loss=f"{loss:.3f}")

    return on_step, progress.stop


def build(directory: Path, settings: PretrainSettings = PRETRAIN) -> None:
    """Write tokenizer, config and pretrained weights of ``tiny`` into ``directory``."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from loops_runner.models.machine import current_machine
    from loops_runner.tiny_build.pretrain import pretrain

    started = time.monotonic()
    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(directory)

    # The embedding is padded to VOCAB_TARGET rows (as Qwen pads its vocabulary):
    # the trained tokenizer is smaller, and a fixed model vocabulary keeps token-id
    # limits stable whatever the tokenizer's exact size.
    config = Qwen3Config(
        vocab_size=max(VOCAB_TARGET, len(tokenizer)),
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **ARCHITECTURE,
    )
    # Seed a private generator state so the build never disturbs, or depends
    # on, the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Qwen3ForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBEDDING_INIT_SCALE)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    on_step, close = _progress_reporter(settings.steps)
    pretrain_started = time.monotonic()
    try:
        losses = pretrain(model, tokenizer, settings, on_step=on_step)
    finally:
        close()
    pretrain_seconds = time.monotonic() - pretrain_started
    model.save_pretrained(directory, safe_serialization=True)
    accuracy = heldout_accuracy(model, tokenizer, settings.threads)

    digests = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }
    info = {
        "name": "tiny",
        "recipe_version": tiny.RECIPE_VERSION,
        "seed": SEED,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain": {**asdict(settings), "seconds": round(pretrain_seconds, 1),
                     "first_loss": round(losses[0], 4), "final_loss": round(losses[-1], 4)},
        "heldout_accuracy": {name: round(value, 3) for name, value in accuracy.items()},
        "heldout_sample": ACCURACY_SAMPLE,
        "build_seconds": round(time.monotonic() - started, 1),
        "libraries": build_libraries(),
        # The CPU class decides the weights' bytes as much as the libraries do
        # (see models/machine.py): a rebuild compares bytes only within it.
        "machine": current_machine().to_json(),
        "sha256": digests,
    }
    (directory / tiny.BUILD_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


# The libraries whose numerics or file format decide the build's bytes. The
# same code gives other weights under another torch or transformers (kernels,
# initialisation order), so a bit-for-bit rebuild needs these exact versions:
# scripts/constraints.txt pins them for development and CI.
BUILD_LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "numpy")


def build_libraries() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in BUILD_LIBRARIES}


def heldout_accuracy(model: Any, tokenizer: Any, threads: int) -> dict[str, float]:
    """Greedy held-out accuracy of every family, the default mix's (``default_mix``) and
    all families' (``all``), on the same fixed questions."""
    from loops_runner.tasks import DEFAULT_FAMILIES, FAMILIES, sample_rows
    from loops_runner.tiny_build.pretrain import greedy_accuracy

    rows = sample_rows(ACCURACY_SAMPLE, split="heldout", families=list(FAMILIES), seed=0,
                       unique=True)
    accuracy = greedy_accuracy(model, tokenizer, rows, threads=threads)
    counts = {name: sum(1 for r in rows if r["family"] == name) for name in DEFAULT_FAMILIES}
    default_mix = sum(accuracy[name] * n for name, n in counts.items()) / sum(counts.values())
    return {"all": accuracy.pop("all"), "default_mix": default_mix, **accuracy}


def build_into_home(home: Path, settings: PretrainSettings = PRETRAIN) -> Path:
    """Build ``tiny`` from scratch into the data home unless a build of this recipe
    version is there; return its directory (what ``loops-runner models build tiny`` does)."""
    return tiny.install(home, lambda staging: build(staging, settings))
