"""Full-weight pretraining of the built-in ``tiny`` on the package's own text.

A randomly initialised model gives LoRA nothing to build on: samples are noise,
RL never sees a reward, preferences cannot move. So ``tiny`` is pretrained
briefly on task chats from the registry's train split plus plain prose, just
long enough to answer the easy questions and miss the hard ones (the
held-out accuracy band the recipes need, measured in docs/tiny-model.md).

Determinism: a fixed number of steps (never a time budget), a private RNG
state, a fixed thread count and a corpus that is a pure function of the seed,
so the same machine always produces the same bytes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from loops_runner.data.synthetic import lexicon, prose, render_chat
from loops_runner.tasks import FAMILIES, as_conversation, sample_rows

_ASSISTANT = "<|im_start|>assistant\n"


@dataclass(frozen=True)
class PretrainSettings:
    steps: int
    batch_size: int  # sequences per step
    max_length: int  # longer documents are cut to this many tokens
    learning_rate: float
    warmup_steps: int
    chats: int  # task chats in the corpus
    prose_paragraphs: int
    lexicon_repeats: int  # copies of the word-fact lexicon in the corpus
    context_weight: float = 0.2  # loss weight of non-answer tokens (answers weigh 1)
    weight_decay: float = 0.01
    grad_clip_norm: float = 1.0
    threads: int = 2
    seed: int = 0


# Ways a pretraining chat may phrase its answer besides the bare answer. Like
# text on the web, the corpus does not answer in one house style: the base
# model often knows the answer but wraps it in words that a strict checker
# refuses, which is exactly what SFT (the bare answer), RL (a reward for it)
# and DPO (a preference for it) then teach.
_WORDY_ANSWERS = ("The answer is {}.", "Sure! {}", "I think it is {}.", "Answer: {}",
                  "{}, I believe.", "That would be {}.")


def concise_share(family: str) -> float:
    """How often pretraining chats of ``family`` give the bare answer (0.05 to 0.45).

    A fixed, family-dependent share (spread evenly over the families in name
    order) rather than one coin for all: greedy decoding then answers some
    families plainly and wraps others, so the base model is right on some
    families and wrong on others, and sampled answers vary within a family
    (what RL needs).
    """
    names = sorted(FAMILIES)
    return 0.05 + 0.4 * names.index(family) / (len(names) - 1)


def documents(settings: PretrainSettings) -> list[tuple[str, int]]:
    """Chats, prose and word facts, shuffled together: ``(text, answer_start)`` pairs.

    ``answer_start`` is the character offset where a chat's assistant answer
    begins (0 for plain text, which is all worth learning).
    """
    rng = random.Random(f"answers-{settings.seed}")
    docs: list[tuple[str, int]] = []
    # Every family of the registry, not only the default mix: the base model
    # should have seen all of them.
    for row in sample_rows(settings.chats, split="train", families=list(FAMILIES),
                           seed=settings.seed):
        chat = as_conversation(row)
        if rng.random() >= concise_share(row["family"]):
            chat["messages"][-1]["content"] = rng.choice(_WORDY_ANSWERS).format(row["answer"])
        text = render_chat(chat)
        docs.append((text, text.rindex(_ASSISTANT) + len(_ASSISTANT)))
    plain = prose(settings.prose_paragraphs, seed=settings.seed)
    for repeat in range(settings.lexicon_repeats):
        plain.extend(lexicon(seed=settings.seed + repeat))
    docs.extend((text, 0) for text in plain)
    random.Random(settings.seed).shuffle(docs)
    return docs


def batches(tokenizer: Any, settings: PretrainSettings) -> list[tuple[Any, Any, Any]]:
    """``(tokens, weights, attention_mask)`` per step: one document per row, padded per batch.

    Documents are not packed into shared rows: a short chat that must copy
    from its own question learns that much faster when no unrelated text sits
    before it. Rows are grouped by length so padding stays small. Answer tokens
    weigh 1, plain text 1, and the question part of a chat ``context_weight``:
    its words are random draws no model can predict, and letting them dominate
    the loss would spend the short budget on noise.
    """
    import torch

    docs = documents(settings)
    encoded = tokenizer([text + "<|endoftext|>" for text, _ in docs],
                        add_special_tokens=False, return_offsets_mapping=True)
    examples = []
    for (_, answer_start), ids, offsets in zip(docs, encoded["input_ids"],
                                               encoded["offset_mapping"], strict=True):
        weights = [1.0 if start >= answer_start else settings.context_weight
                   for start, _ in offsets]
        examples.append((ids[: settings.max_length], weights[: settings.max_length]))
    rng = random.Random(settings.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    # Sort windows of 16 batches by length, then shuffle the batches.
    window = settings.batch_size * 16
    grouped = [i for start in range(0, len(order), window)
               for i in sorted(order[start: start + window], key=lambda i: len(examples[i][0]))]
    steps = [grouped[i: i + settings.batch_size]
             for i in range(0, len(grouped) - settings.batch_size + 1, settings.batch_size)]
    rng.shuffle(steps)
    out = []
    pad = tokenizer.pad_token_id
    for step in steps:
        width = max(len(examples[i][0]) for i in step)
        tokens = torch.full((len(step), width), pad, dtype=torch.long)
        weights = torch.zeros((len(step), width))
        mask = torch.zeros((len(step), width), dtype=torch.long)
        for row, i in enumerate(step):
            ids, w = examples[i]
            tokens[row, : len(ids)] = torch.tensor(ids)
            weights[row, : len(w)] = torch.tensor(w)
            mask[row, : len(ids)] = 1
        out.append((tokens, weights, mask))
    return out


def learning_rate(step: int, settings: PretrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with exactly ``count`` CPU threads: results then do not depend on the machine's."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pretrain(model: Any, tokenizer: Any, settings: PretrainSettings,
             on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train every weight of ``model`` in place; return the loss of each step."""
    import torch
    import torch.nn.functional as F

    steps = batches(tokenizer, settings)
    losses: list[float] = []
    with torch_threads(settings.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                      betas=(0.9, 0.95), weight_decay=settings.weight_decay)
        model.train()
        for step in range(settings.steps):
            tokens, weights, mask = steps[step % len(steps)]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, settings)
            # Right padding: real tokens never attend to pads, and pads carry no weight.
            logits = model(input_ids=tokens, attention_mask=mask).logits
            token_losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                           tokens[:, 1:].reshape(-1), reduction="none")
            target_weights = weights[:, 1:].reshape(-1)
            loss = (token_losses * target_weights).sum() / target_weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
            optimizer.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
        model.eval()
    return losses


def greedy_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]],
                    max_new_tokens: int = 24, batch_size: int = 50,
                    threads: int = 1) -> dict[str, float]:
    """Greedy held-out accuracy per family (and ``all``), scored by the registry's checkers."""
    import torch

    from loops_runner.tasks import as_messages, score

    correct: dict[str, list[float]] = {}
    tokenizer.padding_side = "left"
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        prompts = [tokenizer.apply_chat_template(as_messages(r), tokenize=False,
                                                 add_generation_prompt=True) for r in chunk]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), torch_threads(threads):
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                             skip_special_tokens=True)
        for row, completion in zip(chunk, completions, strict=True):
            correct.setdefault(row["family"], []).append(score(row, completion))
    per_family = {name: sum(v) / len(v) for name, v in sorted(correct.items())}
    every = [s for v in correct.values() for s in v]
    return {"all": sum(every) / len(every), **per_family}
