"""Where recipe data comes from: built-in generators, local files, or Hugging Face datasets.

Two layers:

* :func:`load_rows` reads raw rows (dicts) from any local file that
  ``datasets`` reads (``.jsonl``/``.json``, ``.parquet``, ``.csv``, ``.arrow``,
  a ``save_to_disk`` folder) or any dataset name, with a split and an optional
  column mapping. Every recipe's data goes through it.
* :func:`load_conversations` turns rows into chats ``{"messages": [...]}``
  for SFT (``prompt``/``completion`` rows become a user and an assistant turn).

Errors are :class:`DataError` with one line naming the file, row and field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loops_runner.data.synthetic import conversations

Conversation = dict[str, list[dict[str, str]]]
DataFormat = Literal["auto", "messages", "prompt_completion"]
Row = dict[str, Any]

# File suffixes and the `datasets` builder that reads them.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv",
             ".arrow": "arrow", ".txt": "text"}


class DataError(ValueError):
    pass


class SourceConfig(BaseModel):
    """Where a recipe's rows come from: the YAML ``dataset:`` keys every recipe shares."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    split: str = "train"
    # {their column: our field}, e.g. {question: prompt, answer: completion}
    columns: dict[str, str] = Field(default_factory=dict)


def _read_jsonl(path: Path) -> list[Row]:
    # Read JSONL ourselves: errors then name the line, and a file `datasets`
    # would refuse for mixed column types (common in hand-made files) loads.
    rows: list[Row] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: each line must be a JSON object, "
                                f"got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_with_datasets(source: str, split: str) -> list[Row]:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets ships with the local extra
        raise DataError("reading this source needs `pip install datasets`") from error
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists()
                              or (path / "dataset_dict.json").exists()):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(f"{source}: no split {split!r}; splits: {sorted(dataset)}")
                dataset = dataset[split]
        elif path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{source}: unsupported file type {path.suffix!r}; use one of "
                                f"{', '.join(sorted(_BUILDERS))} or a save_to_disk folder")
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            dataset = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"dataset {source!r} not found ({error})") from None
    except Exception as error:  # datasets raises many types; one clear line for the user
        raise DataError(f"could not read dataset {source!r}: "
                        f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
    return [dict(row) for row in dataset]


def load_rows(source: str, *, split: str = "train",
              columns: Mapping[str, str] | None = None) -> list[Row]:
    """Every row of ``source`` as a dict, with ``columns`` renamed (``{theirs: ours}``)."""
    path = Path(source).expanduser()
    if path.suffix.lower() in (".jsonl", ".json") and path.is_file():
        rows = _read_jsonl(path) if path.suffix.lower() == ".jsonl" else \
            _read_with_datasets(source, split)
    elif source.startswith((".", "/", "~")) and not path.exists():
        raise DataError(f"dataset path {source!r} does not exist")
    else:
        rows = _read_with_datasets(source, split)
    if not rows:
        raise DataError(f"dataset {source!r} has no rows")
    if columns:
        missing = [theirs for theirs in columns if theirs not in rows[0]]
        if missing:
            raise DataError(f"{source}: column mapping names {missing}, which the data lacks; "
                            f"columns: {sorted(rows[0])}")
        rows = [{columns.get(key, key): value for key, value in row.items()} for row in rows]
    return rows


def _to_conversation(row: Row, fmt: DataFormat, where: str) -> Conversation:
    if fmt in ("auto", "messages") and "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise DataError(f"{where}: field 'messages' must be a list of {{role, content}} "
                            "objects")
        return {"messages": [{"role": str(m["role"]), "content": str(m["content"])}
                             for m in messages]}
    if fmt in ("auto", "prompt_completion") and "prompt" in row and "completion" in row:
        return {"messages": [{"role": "user", "content": str(row["prompt"])},
                             {"role": "assistant", "content": str(row["completion"])}]}
    expected = {"messages": "'messages'", "prompt_completion": "'prompt' and 'completion'",
                "auto": "'messages', or 'prompt' and 'completion'"}[fmt]
    raise DataError(f"{where}: expected {expected} fields, found {sorted(row)}")


def load_conversations(source: str, fmt: DataFormat = "auto", *, split: str = "train",
                       num_examples: int = 2000, seed: int = 0,
                       columns: Mapping[str, str] | None = None) -> list[Conversation]:
    """All conversations of ``source`` (``synthetic``, a local file, or an HF dataset)."""
    if source == "synthetic":
        return conversations(num_examples, seed=seed)
    rows = load_rows(source, split=split, columns=columns)
    return [_to_conversation(row, fmt, f"{source} row {index + 1}")
            for index, row in enumerate(rows)]
