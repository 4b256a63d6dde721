"""Client-side tokenizers, loaded once per model and cached.

``base_model`` is a local directory or a Hugging Face id (optionally pinned
by a ``hf://org/repo@rev`` base checkpoint). The client knows no local model
names: a control plane answers with the directory it resolved a name to, and
a caller that talks to servers directly resolves its own names (the runner
does, through ``loops_runner.models.registry``). transformers is imported
only when a tokenizer is first asked for; remote code is never trusted.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


def tokenizer_source(base_model: str, base_checkpoint: str | None = None) -> tuple[str, str | None]:
    """(what to load, revision): a custom base checkpoint's own files win."""
    if base_checkpoint:
        repo, _, revision = base_checkpoint.removeprefix("hf://").partition("@")
        return repo, revision or None
    return base_model, None


def _load_path(name: str) -> str:
    """Directories as absolute paths; hub ids unchanged."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


# Tokenizer classes for which AutoTokenizer resolves to the plain fast tokenizer.
# A local folder that names one is loaded with that class directly: the same
# object, without AutoTokenizer's config machinery, which imports torch (about
# 2 of the 3 CPU-seconds a runner process spent loading tiny's tokenizer).
_PLAIN_FAST_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})


def _is_plain_fast_folder(path: str) -> bool:
    folder = Path(path)
    config = folder / "tokenizer_config.json"
    if not (config.is_file() and (folder / "tokenizer.json").is_file()):
        return False
    try:
        return json.loads(config.read_text()).get("tokenizer_class") in _PLAIN_FAST_CLASSES
    except (OSError, ValueError):
        return False


@lru_cache(maxsize=16)
def load_tokenizer(name: str, revision: str | None = None) -> Any:
    path = _load_path(name)
    if revision is None and _is_plain_fast_folder(path):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer

    extra = {"revision": revision} if revision else {}
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **extra)
    except (ValueError, KeyError, OSError) as first:
        # Families newer than the installed transformers still load through
        # their fast tokenizer file.
        from transformers import PreTrainedTokenizerFast

        try:
            return PreTrainedTokenizerFast.from_pretrained(path, **extra)
        except Exception:
            if "/" not in name:
                raise OSError(
                    f"no tokenizer for {name!r}: it is neither a directory nor a Hugging Face "
                    "id this machine can load. A local model name (e.g. 'tiny') is resolved "
                    "by the caller: pass the directory, e.g. loops_runner.models.registry."
                    f"resolve_model({name!r}).load_path") from first
            raise first from None


def get_tokenizer(base_model: str, base_checkpoint: str | None = None) -> Any:
    return load_tokenizer(*tokenizer_source(base_model, base_checkpoint))
