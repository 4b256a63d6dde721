"""SFT data: rendering with assistant-only masks, sources, batching, LR schedule."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loops_runner.data.batching import length_grouped_batches
from loops_runner.data.chat import render
from loops_runner.data.conversations import read_conversations
from loops_runner.data.sources import DataError, load_rows
from loops_runner.data.synthetic import conversations
from loops_runner.recipes.sft import Config, learning_rate

CHAT = [{"role": "user", "content": "Reverse the word: apple"},
        {"role": "assistant", "content": "elppa"},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_render_matches_apply_chat_template(tokenizer) -> None:
    example = render(tokenizer, CHAT)
    reference = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True)
    assert example.tokens == list(reference["input_ids"])
    trained = [t for t, w in zip(example.tokens, example.weights, strict=True) if w]
    assert tokenizer.decode(trained) == "elppa<|im_end|>4<|im_end|>"
    everything = render(tokenizer, CHAT, train_on="all")
    assert all(everything.weights) and everything.tokens == example.tokens


def test_prefix_masks_agree_with_generation_markers(tokenizer) -> None:
    """Templates without {% generation %} get the same mask by prefix rendering."""
    marked = render(tokenizer, CHAT)
    plain = tokenizer.chat_template.replace("{%- generation -%}", "").replace(
        "{%- endgeneration -%}", "")
    original = tokenizer.chat_template
    tokenizer.chat_template = plain
    try:
        derived = render(tokenizer, CHAT)
    finally:
        tokenizer.chat_template = original
    assert derived.tokens == marked.tokens
    # Prefix rendering attributes each turn's trailing newline to the assistant
    # turn (the template emits it as part of that turn); the rest is identical.
    trained = [t for t, w in zip(derived.tokens, derived.weights, strict=True) if w]
    assert tokenizer.decode(trained).replace("\n", "") == "elppa<|im_end|>4<|im_end|>"


def test_datum_layout_is_next_token(tokenizer) -> None:
    example = render(tokenizer, CHAT[:2])
    datum = example.to_datum()
    assert datum.model_input.to_ints() == example.tokens[:-1]
    assert datum.loss_fn_inputs["target_tokens"].tolist() == example.tokens[1:]
    assert datum.loss_fn_inputs["weights"].tolist() == example.weights[1:]


def test_trained_datum_masks_exactly_the_untrained_targets(tokenizer) -> None:
    # DPO sends these: the trainer computes no LM head where the target is -1.
    example = render(tokenizer, CHAT[:2])
    full, trained = example.to_datum(), example.to_trained_datum()
    assert trained.model_input.to_ints() == full.model_input.to_ints()
    assert trained.loss_fn_inputs["weights"].tolist() == example.weights[1:]
    targets = trained.loss_fn_inputs["target_tokens"].tolist()
    assert targets == [token if weight else -1
                       for token, weight in zip(example.tokens[1:], example.weights[1:],
                                                strict=True)]
    assert 0 < sum(t >= 0 for t in targets) < len(targets)


def test_truncation(tokenizer) -> None:
    assert len(render(tokenizer, CHAT, max_length=8).tokens) == 8


def conversations_of(source: str, **kwargs) -> list[dict]:
    return read_conversations(source, **kwargs)[0].items


def test_sources_jsonl_formats_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"messages": CHAT[:2]}) + "\n\n"
                    + json.dumps({"messages": CHAT}) + "\n")
    rows = conversations_of(str(path))
    assert rows[0]["messages"] == CHAT[:2] and rows[1]["messages"] == CHAT
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no chat here"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 1: expected 'messages' fields"):
        conversations_of(str(bad))
    with pytest.raises(DataError, match=r"missing.jsonl: no such file or folder"):
        conversations_of(str(tmp_path / "missing.jsonl"))


def test_sources_hf_dataset_on_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"prompt": "a", "completion": "b"}] * 3).save_to_disk(
        str(tmp_path / "ds"))
    rows = conversations_of(str(tmp_path / "ds"))
    assert len(rows) == 3 and rows[0]["messages"][0]["content"] == "a"


def test_sources_parquet_csv_and_column_mapping(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    pandas.DataFrame([{"prompt": "p", "completion": "c"}] * 3).to_parquet(tmp_path / "d.parquet")
    rows = conversations_of(str(tmp_path / "d.parquet"))
    assert len(rows) == 3 and rows[0]["messages"][1]["content"] == "c"
    pandas.DataFrame([{"question": "q", "answer": 12}] * 2).to_csv(tmp_path / "d.csv",
                                                                   index=False)
    with pytest.raises(DataError, match=r"d.csv row 1: expected 'messages' fields like the "
                                        r"file's first row, found \['answer', 'question'\]"):
        conversations_of(str(tmp_path / "d.csv"))
    mapped = conversations_of(str(tmp_path / "d.csv"),
                              columns={"question": "prompt", "answer": "completion"})
    # CSV cells stay text: a numeric answer column is the text the file holds.
    assert mapped[1]["messages"] == [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "12"}]
    with pytest.raises(DataError, match=r"column mapping names \['nope'\]"):
        load_rows(str(tmp_path / "d.csv"), columns={"nope": "prompt"})
    with pytest.raises(DataError, match=r"missing.parquet: no such file or folder"):
        load_rows(str(tmp_path / "missing.parquet"))


def test_synthetic_source_is_deterministic() -> None:
    assert conversations(50, seed=3) == conversations(50, seed=3)
    assert conversations(50, seed=3) != conversations(50, seed=4)


def test_length_grouping_reduces_padding_and_is_deterministic() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(512)]

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                   for b in batches)

    grouped = length_grouped_batches(lengths, 16, 8, random.Random(1))
    plain = length_grouped_batches(lengths, 16, 1, random.Random(1))
    assert grouped == length_grouped_batches(lengths, 16, 8, random.Random(1))
    assert sorted(i for b in grouped for i in b) == list(range(512))
    assert padding(grouped) < padding(plain) / 2


def test_learning_rate_schedules() -> None:
    cfg = Config(learning_rate=1.0, warmup_steps=4, lr_schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(0, cfg, 100) == pytest.approx(0.25)
    assert learning_rate(3, cfg, 100) == pytest.approx(1.0)
    assert learning_rate(4, cfg, 100) == pytest.approx(1.0)
    assert learning_rate(99, cfg, 100) == pytest.approx(0.1, abs=1e-3)
    linear = cfg.model_copy(update={"lr_schedule": "linear"})
    assert learning_rate(52, linear, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    constant = cfg.model_copy(update={"lr_schedule": "constant"})
    assert learning_rate(80, constant, 100) == 1.0
