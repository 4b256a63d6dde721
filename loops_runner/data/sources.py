"""Where recipe data comes from: local files, ``save_to_disk`` folders, or Hugging Face datasets.

:func:`read_source` reads raw rows (dicts) with a split and an optional column
mapping; every recipe's data goes through it. A value is resolved the way a
person means it:

* something that looks like a path (it has a folder separator, starts with ``.``
  or ``~``, or ends in a file extension) is a local file or folder, and a missing
  one stops at once with the path and where it was looked for;
* only a name shaped like a hub dataset id (``name`` or ``owner/name``) goes to the
  Hugging Face Hub, and an unreachable hub is one line, not a minute of retries.

Text files (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, ``.txt``) are read here, not by
``datasets``: errors then name the line, a wrongly encoded file says which
encoding was expected, CSV cells stay text, and a hand-made JSONL whose columns
mix types loads. Every row keeps its place (``data.jsonl line 7``, ``data.csv row
3``) so the row checks (:mod:`loops_runner.data.checks`) can name it, and the rows
get a content digest: the data is part of a run's identity.

Errors are :class:`DataError` with one line naming the file, row and field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from loops_runner.errors import DataError

Row = dict[str, Any]
BadRowPolicy = Literal["stop", "skip"]

__all__ = ["BadRowPolicy", "DataError", "Row", "Rows", "SourceConfig", "load_rows",
           "looks_like_path", "read_source"]

# Read here, with line numbers and an encoding check.
_TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")
# Read through `datasets` (binary formats and save_to_disk folders).
_BINARY_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
SUPPORTED = (*_TEXT_SUFFIXES, *_BINARY_BUILDERS, "a save_to_disk folder")
# Endings that make a value a file name, also ones we cannot read (said so then).
_FILE_SUFFIXES = frozenset((*_TEXT_SUFFIXES, *_BINARY_BUILDERS, ".xlsx", ".xls", ".gz", ".zip",
                            ".yaml", ".yml", ".md", ".tar", ".bz2", ".zst", ".pkl", ".pickle"))
# `owner/name` or `name`: what the Hub accepts as a dataset id.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
_HUB_TIMEOUT_S = 10.0


class SourceConfig(BaseModel):
    """Where a recipe's rows come from: the YAML ``dataset:`` keys every recipe shares."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1)
    split: str = "train"
    # {their column: our field}, e.g. {question: prompt, answer: completion}
    columns: dict[str, str] = Field(default_factory=dict)
    # stop: any bad row stops the run, naming it; skip: bad rows are left out (and
    # counted) while they are at most half of the source
    bad_rows: BadRowPolicy = "stop"


@dataclass(frozen=True)
class Rows:
    """A source's rows, where each one stands, and a digest of their content."""

    source: str
    rows: list[Row]
    unit: Literal["line", "row"]  # JSONL rows are named by their line
    numbers: list[int]            # 1-based line or row of each row
    digest: str                   # sha256 of the rows' content (after column mapping)

    def where(self, index: int) -> str:
        return f"{self.source} {self.unit} {self.numbers[index]}"

    def __len__(self) -> int:
        return len(self.rows)


def looks_like_path(source: str) -> bool:
    """Whether a person wrote ``source`` as a path rather than a hub dataset id."""
    if source.startswith((".", "~", "/")) or "\\" in source or source.count("/") > 1:
        return True
    return Path(source).suffix.lower() in _FILE_SUFFIXES or not _HUB_ID.fullmatch(source)


def _not_found(source: str, path: Path) -> DataError:
    where = path if path.is_absolute() else Path.cwd() / path
    return DataError(f"{source}: no such file or folder (looked for {where}); supported: "
                     f"{', '.join(SUPPORTED)}, or a Hugging Face dataset name")


def _decoded(path: Path, source: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(f"{source} line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x} "
                        f"at column {column}); the file must be UTF-8 encoded (re-save it as "
                        "UTF-8, e.g. `iconv -f latin1 -t utf-8`)") from None


def _read_jsonl(text: str, source: str) -> tuple[list[Row], list[int]]:
    rows: list[Row] = []
    numbers: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{source} line {number}: not valid JSON ({error.msg} at column "
                            f"{error.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{source} line {number}: each line must be a JSON object, "
                            f"got {type(row).__name__}")
        rows.append(row)
        numbers.append(number)
    return rows, numbers


def _read_json(text: str, source: str) -> tuple[list[Row], list[int]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        # One object per line is a common `.json` file too.
        if error.msg == "Extra data":
            return _read_jsonl(text, source)
        raise DataError(f"{source} line {error.lineno}: not valid JSON ({error.msg})") from None
    if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())),
                                                                  list):
        value = next(iter(value.values()))  # {"data": [...]}
    if not isinstance(value, list):
        raise DataError(f"{source}: expected a JSON list of objects (or one object per line), "
                        f"got {type(value).__name__}")
    for index, row in enumerate(value, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{source} row {index}: each item must be a JSON object, "
                            f"got {type(row).__name__}")
    return value, list(range(1, len(value) + 1))


def _read_delimited(text: str, source: str, delimiter: str) -> tuple[list[Row], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise DataError(f"{source} line 1: the header must name every column once; "
                        f"found {header}")
    rows: list[Row] = []
    numbers: list[int] = []
    for record in reader:
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            raise DataError(f"{source} row {len(rows) + 1} (line {reader.line_num}): "
                            f"{len(record)} cells, the header has {len(header)}")
        rows.append(dict(zip(header, record, strict=True)))
        numbers.append(len(rows))
    return rows, numbers


def _read_text(text: str, source: str) -> tuple[list[Row], list[int]]:
    lines = text.splitlines()
    kept = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    return [{"text": line} for _, line in kept], [n for n, _ in kept]


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets ships with the local extra
        raise DataError("reading this source needs `pip install datasets`") from error
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _read_binary(path: Path, source: str, split: str) -> list[Row]:
    datasets = _datasets_module()
    try:
        if path.is_dir():
            if not ((path / "dataset_info.json").exists()
                    or (path / "dataset_dict.json").exists()):
                raise DataError(f"{source}: a folder, but not one written by save_to_disk; "
                                f"point at a file ({', '.join(SUPPORTED[:-1])}) instead")
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(f"{source}: no split {split!r}; splits: {sorted(dataset)}")
                dataset = dataset[split]
        else:
            builder = _BINARY_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{source}: unsupported file type {path.suffix!r}; use one of "
                                f"{', '.join(SUPPORTED)}")
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except DataError:
        raise
    except Exception as error:  # datasets raises many types; one clear line for the user
        raise DataError(f"{source}: could not read it ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})") from None
    return [dict(row) for row in dataset]


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _probe_hub(source: str) -> None:
    """Fail in one line, within seconds, when the Hub cannot be reached or lacks ``source``."""
    import logging

    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    # huggingface_hub and datasets log every retry as a warning: keep the user's console to
    # the one line below.
    for name in ("huggingface_hub", "datasets", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        HfApi().dataset_info(source, timeout=_HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        raise DataError(f"{source}: no such local file, and no dataset of that name on the "
                        "Hugging Face Hub") from None
    except Exception as error:
        raise DataError(f"{source}: not a local file, and the Hugging Face Hub could not be "
                        f"reached ({type(error).__name__}); check the network (or HF_ENDPOINT), "
                        "or point at a local file") from None


def _read_hub(source: str, split: str) -> list[Row]:
    datasets = _datasets_module()
    if _hub_offline():
        hint = ("it is not in the local Hugging Face cache, and HF_HUB_OFFLINE forbids "
                "downloading it")
    else:
        _probe_hub(source)
        hint = "could not load it from the Hugging Face Hub"
    try:
        dataset = datasets.load_dataset(source, split=split)
    except ValueError as error:
        if "split" in str(error).lower():
            raise DataError(f"{source}: no split {split!r} ({str(error).splitlines()[0]})"
                            ) from None
        raise DataError(f"{source}: {hint} ({str(error).splitlines()[0]})") from None
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise DataError(f"{source}: {hint} ({type(error).__name__}: {first})") from None
    return [dict(row) for row in dataset]


def _read(source: str, split: str) -> tuple[list[Row], Literal["line", "row"], list[int]]:
    path = Path(source).expanduser()
    if path.exists() or looks_like_path(source):
        if not path.exists():
            raise _not_found(source, path)
        suffix = path.suffix.lower()
        if path.is_file() and suffix in _TEXT_SUFFIXES:
            text = _decoded(path, source)
            readers = {".jsonl": lambda: _read_jsonl(text, source),
                       ".json": lambda: _read_json(text, source),
                       ".csv": lambda: _read_delimited(text, source, ","),
                       ".tsv": lambda: _read_delimited(text, source, "\t"),
                       ".txt": lambda: _read_text(text, source)}
            rows, numbers = readers[suffix]()
            return rows, "line" if suffix in (".jsonl", ".txt") else "row", numbers
        rows = _read_binary(path, source, split)
    else:
        rows = _read_hub(source, split)
    return rows, "row", list(range(1, len(rows) + 1))


def _digest(rows: list[Row]) -> str:
    hasher = hashlib.sha256()
    for row in rows:
        hasher.update(json.dumps(row, sort_keys=True, default=str).encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


def read_source(source: str, *, split: str = "train",
                columns: Mapping[str, str] | None = None) -> Rows:
    """Every row of ``source``, with ``columns`` renamed (``{theirs: ours}``)."""
    rows, unit, numbers = _read(source, split)
    if not rows:
        raise DataError(f"{source}: has no rows")
    if columns:
        present = {key for row in rows for key in row}
        missing = [theirs for theirs in columns if theirs not in present]
        if missing:
            raise DataError(f"{source}: the column mapping names {missing}, which the data "
                            f"lacks; its columns: {sorted(present)}")
        rows = [{columns.get(key, key): value for key, value in row.items()} for row in rows]
    return Rows(source, rows, unit, numbers, _digest(rows))


def load_rows(source: str, *, split: str = "train",
              columns: Mapping[str, str] | None = None) -> list[Row]:
    """The rows alone (see :func:`read_source`)."""
    return read_source(source, split=split, columns=columns).rows
