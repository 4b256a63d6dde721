"""Where SFT examples come from: the built-in generator, JSONL files, or HF datasets.

Every source yields conversations ``{"messages": [{"role", "content"}, ...]}``;
prompt/completion rows become a user turn and an assistant turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from loops_runner.data.synthetic import conversations

Conversation = dict[str, list[dict[str, str]]]
DataFormat = Literal["auto", "messages", "prompt_completion"]


class DataError(ValueError):
    pass


def _to_conversation(row: dict[str, Any], fmt: DataFormat, where: str) -> Conversation:
    if fmt in ("auto", "messages") and "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        return {"messages": [{"role": str(m["role"]), "content": str(m["content"])}
                             for m in messages]}
    if fmt in ("auto", "prompt_completion") and "prompt" in row and "completion" in row:
        return {"messages": [{"role": "user", "content": str(row["prompt"])},
                             {"role": "assistant", "content": str(row["completion"])}]}
    expected = {"messages": "'messages'", "prompt_completion": "'prompt' and 'completion'",
                "auto": "'messages', or 'prompt' and 'completion'"}[fmt]
    raise DataError(f"{where}: expected {expected} fields, found {sorted(row)}")


def _read_jsonl(path: Path, fmt: DataFormat) -> list[Conversation]:
    out = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            out.append(_to_conversation(row, fmt, f"{path}:{number}"))
    return out


def _read_hf(source: str, split: str, fmt: DataFormat) -> list[Conversation]:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets ships with the local extra
        raise DataError("Hugging Face datasets need `pip install datasets`") from error
    path = Path(source).expanduser()
    if path.is_dir():  # saved with Dataset.save_to_disk
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(source, split=split)
    return [_to_conversation(dict(row), fmt, f"{source}[{index}]")
            for index, row in enumerate(dataset)]


def load_conversations(source: str, fmt: DataFormat = "auto", *, split: str = "train",
                       num_examples: int = 2000, seed: int = 0) -> list[Conversation]:
    """All conversations of ``source`` (``synthetic``, a JSONL file, or an HF dataset)."""
    if source == "synthetic":
        return conversations(num_examples, seed=seed)
    path = Path(source).expanduser()
    if path.suffix in (".jsonl", ".json") and path.is_file():
        rows = _read_jsonl(path, fmt)
    elif path.suffix in (".jsonl", ".json"):
        raise DataError(f"dataset file {source!r} does not exist")
    else:
        rows = _read_hf(source, split, fmt)
    if not rows:
        raise DataError(f"dataset {source!r} has no examples")
    return rows
