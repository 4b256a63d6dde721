"""DPO data: pair formats, validation and bad-row accounting, the bundled set, rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loops_runner.data.preferences import load_pairs, pair_from_row, render_pair, task_pairs
from loops_runner.data.sources import DataError
from loops_runner.tasks import score

USER = {"role": "user", "content": "What is 2 + 3?"}


def test_pair_formats_normalise_to_prompt_and_responses() -> None:
    plain = pair_from_row({"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"}, "r")
    assert plain.prompt == [USER]
    assert plain.chosen == [{"role": "assistant", "content": "5"}]
    as_message = pair_from_row({"prompt": [USER], "chosen": {"role": "assistant",
                                                             "content": "5"},
                                "rejected": "6"}, "r")
    assert as_message == plain
    conversation = pair_from_row({"prompt": [USER],
                                  "chosen": [USER, {"role": "assistant", "content": "5"}],
                                  "rejected": [USER, {"role": "assistant", "content": "6"}]}, "r")
    assert conversation == plain
    implicit = pair_from_row({"chosen": [USER, {"role": "assistant", "content": "5"}],
                              "rejected": [USER, {"role": "assistant", "content": "6"}]}, "r")
    assert implicit == plain


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "q", "chosen": "a"}, r"data.jsonl row 3: missing field 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "are the same"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "q", "chosen": 5, "rejected": "b"}, "field 'chosen' must be text"),
    ({"chosen": [USER, {"role": "assistant", "content": "5"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "6"}]},
     "continue different prompts"),
    ({"prompt": [USER], "chosen": [{"role": "user", "content": "x"}], "rejected": "6"},
     "field 'chosen' must be an assistant response"),
])
def test_invalid_pairs_name_row_and_field(row: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        pair_from_row(row, "data.jsonl row 3")


def test_bad_rows_are_counted_and_a_mostly_bad_file_stops(tmp_path: Path) -> None:
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, good, good, {"prompt": "q"}]))
    with pytest.raises(DataError, match=r"pairs.jsonl line 4: missing field 'chosen' .*"
                                        r"\(1 of 4 rows bad; recipe.dataset.bad_rows=skip "
                                        r"trains on the other 3\)"):
        load_pairs(str(path))  # the default policy stops at the first bad row
    loaded = load_pairs(str(path), bad_rows="skip")
    assert (len(loaded.pairs), loaded.bad_rows, loaded.read) == (3, 1, 4)
    assert loaded.first_problem is not None and "pairs.jsonl line 4" in loaded.first_problem
    path.write_text("\n".join(json.dumps(r) for r in [good, {"prompt": "q"}, {"chosen": "x"}]))
    with pytest.raises(DataError, match=r"2 of 3 rows are bad, more than half; first: "
                                        r".*pairs.jsonl line 2: missing field 'chosen'"):
        load_pairs(str(path), bad_rows="skip")


def test_column_mapping_and_parquet(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    pandas.DataFrame([{"question": "q", "good": "a", "bad": "b"}] * 3).to_parquet(
        tmp_path / "p.parquet")
    loaded = load_pairs(str(tmp_path / "p.parquet"),
                        columns={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert len(loaded.pairs) == 3 and loaded.pairs[0].rejected[0]["content"] == "b"


def test_bundled_pairs_prefer_the_correct_answer_and_keep_splits_apart() -> None:
    train = task_pairs(200, "train", seed=0)
    held = task_pairs(40, "heldout", seed=0)
    for pair in train + held:
        assert pair.task is not None
        assert score(pair.task, pair.chosen[0]["content"]) == 1.0
        assert score(pair.task, pair.rejected[0]["content"]) == 0.0
    assert not {p.task["id"] for p in train} & {p.task["id"] for p in held}  # type: ignore[index]
    assert task_pairs(20, "train", seed=0) == train[:20]


def test_rendering_trains_on_the_response_only(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from loops_runner.data.chat import prompt_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, USER]
    pair = pair_from_row({"prompt": history, "chosen": "5", "rejected": "six"}, "r")
    rendered = render_pair(tokenizer, pair, max_length=256)
    assert rendered is not None
    start = len(prompt_tokens(tokenizer, history))
    for example, answer in ((rendered.chosen, "5"), (rendered.rejected, "six")):
        assert example.tokens[:start] == prompt_tokens(tokenizer, history)
        assert not any(example.weights[:start])  # the earlier assistant turn is context
        trained = [t for t, w in zip(example.tokens, example.weights, strict=True) if w]
        assert tokenizer.decode(trained).startswith(answer)
    # Truncated until no response token is left: the pair is unusable, not silently empty.
    assert render_pair(tokenizer, pair, max_length=start) is None
