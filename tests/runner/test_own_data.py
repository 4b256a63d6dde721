"""A user's own data: sources resolved as meant, every row checked, one line per fault."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loops_runner.data.checks import check_rows, held_out_count
from loops_runner.data.conversations import conversation_of, read_conversations
from loops_runner.data.sources import DataError, looks_like_path, read_source
from loops_runner.optim import OptimConfig, learning_rate, warmup_steps
from loops_runner.runner.recovery import is_recoverable

USER = {"role": "user", "content": "2 + 2?"}
BOT = {"role": "assistant", "content": "4"}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize(("value", "is_path"), [
    ("nope.jsonl", True), ("data/train.csv", True), ("./x", True), ("~/d", True),
    ("a/b/c", True), ("sheet.xlsx", True), ("imdb", False), ("openai/gsm8k", False),
    ("HuggingFaceH4/ultrachat_200k", False),
])
def test_only_hub_shaped_names_are_hub_ids(value: str, is_path: bool) -> None:
    assert looks_like_path(value) is is_path


def test_a_missing_path_stops_at_once_naming_where_it_looked(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(DataError, match=rf"^nope.jsonl: no such file or folder \(looked for "
                                        rf"{tmp_path}/nope.jsonl\)"):
        read_source("nope.jsonl")
    assert time.monotonic() - started < 2


def test_an_unreachable_hub_is_one_line_within_seconds() -> None:
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_OFFLINE": "0",
           "HF_DATASETS_OFFLINE": "0"}
    code = ("from loops_runner.data.sources import read_source\n"
            "read_source('someone/some_dataset')")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert time.monotonic() - started < 30
    last = result.stderr.strip().splitlines()[-1]
    assert "DataError: someone/some_dataset: not a local file, and the Hugging Face Hub could " \
           "not be reached" in last
    assert "Retrying" not in result.stderr and "retry" not in result.stderr.lower()


def test_wrong_encoding_names_line_column_and_the_expected_encoding(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("prompt,completion\nhi,ok\ncafé,yes\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv line 3: not valid UTF-8 \(byte 0xe9 at "
                                        r"column 4\); the file must be UTF-8 encoded"):
        read_source(str(path))


@pytest.mark.parametrize(("row", "message"), [
    ({"messages": [USER]}, r"field 'messages' has no assistant turn, so nothing to train on"),
    ({"messages": [USER, {"role": "assistant", "content": None}]},
     r"field 'messages\[1\].content' is null"),
    ({"messages": [USER, {"role": "assistant", "content": 4}]},
     r"field 'messages\[1\].content' must be text, got int"),
    ({"messages": [USER, {"role": "assistant", "content": "  "}]},
     r"field 'messages\[1\].content' is empty"),
    ({"messages": []}, r"field 'messages' must be a non-empty list"),
    ({"messages": [USER, "4"]}, r"field 'messages\[1\]' must be an object"),
    ({"prompt": None, "completion": "4"}, r"field 'prompt' is null"),
    ({"prompt": "2 + 2?", "completion": ""}, r"field 'completion' is empty"),
    ({"prompt": "2 + 2?"}, r"missing field 'completion'"),
])
def test_each_bad_chat_row_is_named_with_its_field(row: dict, message: str) -> None:
    with pytest.raises(DataError, match=rf"^data.jsonl line 7: {message}"):
        conversation_of(row, "data.jsonl line 7", "auto")


def test_other_chat_dialects_get_the_whole_role_mapping(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "share.jsonl", [
        {"messages": [{"role": "human", "content": "hi"}, {"role": "bot", "content": "yo"}]}] * 3)
    with pytest.raises(DataError, match=r"share.jsonl line 1: role 'human' is not one of .*"
                                        r"this file uses 'human', 'bot': map them with "
                                        r"recipe.dataset.roles='\{human: user, bot: assistant\}'"):
        read_conversations(source)
    checked, _ = read_conversations(source, roles={"human": "user", "bot": "assistant"})
    assert checked.items[0]["messages"][1] == {"role": "assistant", "content": "yo"}


def test_a_file_mixing_formats_names_the_first_row_of_the_other_format(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": [USER, BOT]}] * 4
                         + [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataError, match=r"mixed.jsonl line 5: expected 'messages' fields like "
                                        r"the file's first row, found \['completion', 'prompt'\]; "
                                        r"a file must use one format"):
        read_conversations(source)


def test_the_bad_row_policy_stops_by_default_and_skips_a_minority_on_request(
        tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "completion": "a"} for i in range(9)]
    source = write_jsonl(tmp_path / "d.jsonl", [*rows[:3], {"prompt": None,
                                                            "completion": "a"}, *rows[3:]])
    with pytest.raises(DataError, match=r"d.jsonl line 4: field 'prompt' is null; it must be "
                                        r"text \(1 of 10 rows bad; recipe.dataset.bad_rows=skip "
                                        r"trains on the other 9\)"):
        read_conversations(source)
    checked, _ = read_conversations(source, bad_rows="skip")
    assert (len(checked.items), checked.read, checked.skipped) == (9, 10, 1)
    assert checked.first_problem is not None and "line 4" in checked.first_problem
    half_bad = read_source(write_jsonl(tmp_path / "h.jsonl", [{"x": 1}] * 6 + rows[:4]))
    with pytest.raises(DataError, match=r"6 of 10 rows are bad, more than half"):
        check_rows(half_bad, lambda r, w: conversation_of(r, w, "prompt_completion"),
                   policy="skip", policy_key="k")


def test_too_few_rows_for_a_held_out_split() -> None:
    assert held_out_count(2000, 64, "s") == 64
    assert held_out_count(100, 64, "s") == 20  # a fifth of small data, not half
    assert held_out_count(2, 64, "s") == 1
    with pytest.raises(DataError, match=r"one.jsonl: 1 usable rows; at least 2 are needed"):
        held_out_count(1, 64, "one.jsonl")


def test_the_rows_digest_follows_the_content(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    first = read_source(write_jsonl(path, [{"prompt": "a", "completion": "b"}])).digest
    assert read_source(str(path)).digest == first
    second = read_source(write_jsonl(path, [{"prompt": "a", "completion": "c"}])).digest
    assert second != first


def test_warmup_never_takes_more_than_a_fifth_of_the_run() -> None:
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=10)
    assert warmup_steps(cfg, 150) == 10
    assert warmup_steps(cfg, 12) == 2
    assert learning_rate(1, cfg, 12) == pytest.approx(1.0)  # the peak after 2 warmup steps


def test_a_rephrased_data_error_is_never_retried_as_a_service_failure() -> None:
    try:
        try:
            raise ConnectionError("the hub is unreachable")
        except ConnectionError:
            raise DataError("data.jsonl: could not be read") from None
    except DataError as error:
        assert not is_recoverable(error)
